"""The README's main command on a reduced size: assets built, SAE exported, archive valid."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_cli import needs_stories
from tests.compute.builders import STORIES_DIR


def demo(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "mistudio_cli.demo", "--data-dir", str(data_dir),
            "--model-dir", str(STORIES_DIR), "--rows", "96", "--steps", "60", "--d-sae", "64",
        ],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


@needs_stories
@pytest.mark.slow
def test_demo_exports_a_valid_archive_and_a_rerun_reuses_the_cache(tmp_path: Path) -> None:
    first = demo(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "validation: valid" in first.stdout
    archive = re.search(r"archive:\s+file://(\S+\.zip)", first.stdout)
    assert archive, first.stdout
    validated = subprocess.run(
        [sys.executable, "-m", "mistudio_cli", "validate", archive.group(1)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert validated.returncode == 0, validated.stdout[-3000:]
    second = demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "built now: nothing" in second.stdout
    assert "computed 0, reused from cache 64" in second.stdout


def test_demo_without_the_model_says_where_to_put_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mistudio_cli.demo", "--model-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "MISTUDIO_DEMO_MODEL_DIR" in result.stderr and "Traceback" not in result.stderr
