"""buf lint (protos/buf.yaml) runs offline and fails on an undocumented contract element."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _lint_protos() -> ModuleType:
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("lint_protos", SCRIPTS / "lint_protos.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


lint_protos = _lint_protos()
pytestmark = pytest.mark.skipif(
    not lint_protos.PLUGIN.exists(), reason="buf is not installed: run 'make buf'"
)


def test_committed_contracts_are_lint_clean() -> None:
    assert lint_protos.lint() == []


def test_a_field_without_a_comment_is_reported_by_name(tmp_path: Path) -> None:
    root = tmp_path / "protos"
    shutil.copytree(lint_protos.PROTO_ROOT / "mistudio", root / "mistudio")
    tokens = root / "mistudio" / "common" / "v1" / "tokens.proto"
    undocumented_field = "\n// Documented.\nmessage Extra {\n  int32 bare = 1;\n}\n"
    tokens.write_text(tokens.read_text() + undocumented_field)

    findings = lint_protos.lint(root)

    assert len(findings) == 1
    assert findings[0].startswith("mistudio/common/v1/tokens.proto:")
    assert 'Field "bare" should have a non-empty comment' in findings[0]
