"""Lint the contracts with buf (rules in protos/buf.yaml: STANDARD + COMMENTS), offline.

buf runs as a protoc plugin so imports resolve from the same include paths as the stubs
(googleapis-common-protos, grpc_tools), never from the Buf Schema Registry. The plugin is the
pinned npm package in tools/buf, installed by ``make buf``; ``make protos-lint`` runs this.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from gen_protos import PROTO_ROOT, ROOT, include_args, proto_files

PLUGIN = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "protoc-gen-buf-lint"
CONFIG = PROTO_ROOT / "buf.yaml"
_PLUGIN_PREFIX = "--buf-lint_out: "


def lint(root: Path = PROTO_ROOT, config: Path = CONFIG) -> list[str]:
    """buf's findings for the contracts under ``root``, one per line; empty when clean."""
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                *include_args(root),
                f"--plugin=protoc-gen-buf-lint={PLUGIN}",
                f"--buf-lint_out={out}",
                f"--buf-lint_opt={json.dumps({'input_config': str(config)})}",
                *proto_files(root),
            ],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode == 0:
        return []
    findings = [
        line.removeprefix(_PLUGIN_PREFIX)
        for line in result.stderr.splitlines()
        if line.strip() and "Plugin failed with status code" not in line
    ]
    return findings or [f"protoc exited with status {result.returncode}"]


def main() -> int:
    if not PLUGIN.exists():
        print(f"buf is not installed ({PLUGIN.relative_to(ROOT)} missing): run 'make buf'")
        return 1
    findings = lint()
    for finding in findings:
        print(f"protos/{finding}")
    if findings:
        print(f"buf lint: {len(findings)} problem(s); rules in {CONFIG.relative_to(ROOT)}")
        return 1
    print(f"buf lint: {len(proto_files())} proto files clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
