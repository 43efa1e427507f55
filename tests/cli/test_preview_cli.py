"""`mistudio-export preview`: the viewer written from an archive or folder, served on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mistudio_cli.main import build_parser, main
from mistudio_cli.options import export_config
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.prd_json import write_prd_export
from mistudio_export.packaging import build_archive

from tests.export.formats.builders import dashboard, naming, sae_info


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-preview")
    folder = root / "my-export"
    write_prd_export(folder, sae_info(), naming(), column_batches(dashboard(i) for i in range(3)))
    return build_archive(folder, root / "my-export.zip").path


def test_preview_writes_the_viewer_beside_the_working_folder_by_default(
    archive: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["preview", str(archive)]) == 0
    index = tmp_path / "my-export-preview" / "index.html"
    assert index.is_file()
    assert f"preview of 3 features: {index.as_uri()}" in capsys.readouterr().out


def test_a_missing_archive_is_one_line_naming_the_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["preview", str(tmp_path / "nope.zip")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error [ARCHIVE]:") and "nope.zip does not exist" in err
    assert "fix:" in err


def test_an_output_folder_holding_other_files_is_refused_naming_the_flag(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "thesis.tex").write_text("keep me")
    assert main(["preview", str(archive), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error [--output]:")
    assert (tmp_path / "thesis.tex").read_text() == "keep me"


def test_port_without_serve_is_refused(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", str(archive), "--port", "8123"]) == 2
    assert "error [--port]: --port needs --serve" in capsys.readouterr().err


def test_serve_answers_on_loopback_until_ctrl_c(archive: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mistudio_cli", "preview", str(archive)]
    command += ["--output", str(tmp_path / "site"), "--serve"]
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline(), server.stdout.readline()]
        url = lines[1].split()[2].rstrip(";")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/index.html"), lines
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b'<script src="viewer.js">' in response.read()
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0


def test_help_shows_the_examples_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["preview", "--help"])
    text = capsys.readouterr().out
    assert "ARCHIVE|JOB" in text and "--serve" in text and "examples:" in text
    assert "default: ./NAME-preview" in text and "default: a free port" in text


def test_run_with_preview_asks_the_export_for_the_viewer() -> None:
    args = build_parser().parse_args(["run", "./my-sae", "--with-preview"])
    assert export_config(args).with_preview
    assert not export_config(build_parser().parse_args(["run", "./my-sae"])).with_preview
