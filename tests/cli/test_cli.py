"""`mistudio-export` driven as a user would: a subprocess, its exit code and what it prints."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.compute.builders import STORIES_MODEL, STORIES_REF, STORIES_TOKENIZER, write_sae_folder

needs_stories = pytest.mark.skipif(
    not (STORIES_MODEL.is_file() and STORIES_TOKENIZER.is_file()),
    reason=f"stories260K is not available at {STORIES_MODEL.parent}",
)
HOOK = "blocks.2.hook_resid_post"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def cli(*args: str, data_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mistudio_cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error")
    assert "fix:" in result.stderr
    for needle in needles:
        assert needle in result.stderr


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sae") / "random-sae"
    return write_sae_folder(folder, "standard", d_in=64, d_sae=128, hook_name=HOOK)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 512, size=(256, 64), dtype=np.int32)
    tokens[:, 0] = 1  # BOS
    path = tmp_path_factory.mktemp("tokens") / "tokens.npy"
    np.save(path, tokens)
    return path


def test_every_command_has_help_with_examples(tmp_path: Path) -> None:
    top = subprocess.run(
        [sys.executable, "-m", "mistudio_cli", "--help"], capture_output=True, text=True
    )
    assert top.returncode == 0
    for command in (
        "run", "estimate", "validate", "status", "list", "cancel", "pause", "resume",
        "labels", "upload", "delete", "download", "serve",
    ):  # fmt: skip
        assert command in top.stdout
        result = subprocess.run(
            [sys.executable, "-m", "mistudio_cli", command, "--help"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout
    run_help = cli("run", "--help", data_dir=tmp_path).stdout
    assert "examples:" in run_help and "--logit-k" in run_help and "--delta-from" in run_help


def test_the_command_script_imports_nothing_of_the_command_line_until_it_runs() -> None:
    # The export's spawned workers re-run the script that started their parent before their
    # first task: what its import costs, each of them pays.
    script = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]["mistudio-export"]
    module, function = script.split(":")
    probe = f"import sys, {module}; print(callable({module}.{function}), sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    runs, modules = done.stdout.split(" ", 1)
    assert runs == "True"
    assert "mistudio_cli.main" not in modules
    assert "'grpc'" not in modules


def test_validate_a_missing_path_is_one_clear_line(tmp_path: Path) -> None:
    assert_one_line_error(cli("validate", str(tmp_path / "nope.zip"), data_dir=tmp_path), "nope")


def test_validate_a_file_that_is_not_a_zip_names_the_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"this is not a zip archive")
    assert_one_line_error(cli("validate", str(broken), data_dir=tmp_path), "not a readable ZIP")


@needs_stories
def test_a_bad_sae_folder_is_rejected_with_the_problem_and_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "bad-sae"
    write_sae_folder(folder, "standard", d_in=48, d_sae=128, hook_name=HOOK)
    result = cli("run", str(folder), "--model", STORIES_REF, data_dir=tmp_path / "data")
    assert_one_line_error(result, "d_in")


def test_an_unknown_job_is_not_found(tmp_path: Path) -> None:
    result = cli("status", "no-such-job", data_dir=tmp_path)
    assert_one_line_error(result, "no-such-job")


@needs_stories
@pytest.mark.slow
def test_run_exports_downloads_and_the_archive_validates(
    tmp_path: Path, sae_folder: Path, token_file: Path
) -> None:
    archive = tmp_path / "export.zip"
    result = cli(
        "run", str(sae_folder), "--model", STORIES_REF, "--tokens", str(token_file),
        "--features", "0:16", "--examples", "20", "--logit-k", "10", "--bins", "20",
        "--output", str(archive), data_dir=tmp_path / "data",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "complete" in result.stdout and "validation: valid" in result.stdout
    assert archive.is_file()
    validated = cli("validate", str(archive), data_dir=tmp_path / "data")
    assert validated.returncode == 0, validated.stdout + validated.stderr
    listing = cli("list", data_dir=tmp_path / "data")
    assert "succeeded" in listing.stdout and "features 0..16; top 20" in listing.stdout
    job_id = listing.stdout.split()[0]
    deleted = cli("delete", job_id, data_dir=tmp_path / "data")
    assert deleted.returncode == 0, deleted.stderr
    assert job_id not in cli("list", data_dir=tmp_path / "data").stdout
    assert not list((tmp_path / "data" / "archives").rglob("*.zip"))


@needs_stories
@pytest.mark.slow
def test_ctrl_c_cancels_the_running_export_cleanly(
    tmp_path: Path, sae_folder: Path, token_file: Path
) -> None:
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mistudio_cli", "run", str(sae_folder),
            "--model", STORIES_REF, "--tokens", str(token_file), "--batch-size", "1",
            "--data-dir", str(data_dir),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + 240
    while "Activation pass" not in seen and time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen += line
    assert "Activation pass" in seen, seen
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, seen + err
    assert "Traceback" not in err
    job_id = re.search(r"cancelling export (\S+?)…", err)
    assert job_id, err
    status = cli("status", job_id.group(1), data_dir=data_dir)
    assert "cancelled" in status.stdout, status.stdout + status.stderr


@needs_stories
@pytest.mark.slow
def test_a_bad_explanation_index_stops_the_run_before_the_sae_is_registered(
    tmp_path: Path, sae_folder: Path
) -> None:
    bad = tmp_path / "explanations.json"
    bad.write_text('[{"feature_index": 1, "description": "ok"},'
                   ' {"feature_index": 128, "description": "too far"}]')  # fmt: skip
    failed = cli("run", str(sae_folder), "--model", STORIES_REF, "--explanations", str(bad),
                 data_dir=tmp_path / "data")  # fmt: skip
    assert_one_line_error(failed, "explanations.json[1]", "0..127")
    labels = tmp_path / "labels.csv"
    labels.write_text("feature_index,label\n1,dogs\n")
    registered = cli("run", "random-sae", "--labels", str(labels), data_dir=tmp_path / "data")
    assert registered.returncode != 0 and "random-sae" in registered.stderr


@needs_stories
@pytest.mark.slow
def test_labels_and_explanations_given_again_are_kept_once(
    tmp_path: Path, sae_folder: Path, token_file: Path
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("feature_index,label,category\n1,dogs,animals\n")
    explanations = tmp_path / "explanations.json"
    explanations.write_text('[{"feature_index": 2, "description": "cats", "method": "np_max-act"}]')
    for n in (1, 2):
        archive = tmp_path / f"export-{n}.zip"
        result = cli(
            "run", str(sae_folder), "--model", STORIES_REF, "--tokens", str(token_file),
            "--features", "0:4", "--format", "neuronpedia", "--labels", str(labels),
            "--explanations", str(explanations), "--output", str(archive),
            data_dir=tmp_path / "data",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        with zipfile.ZipFile(archive) as zf:
            doc = json.loads(zf.read("explanations/explanations.json"))
        found = {
            (e["feature_index"], x["method"], x["description"])
            for e in doc["features"]
            for x in e["explanations"]
        }
        assert found == {(1, "mistudio_label", "dogs"), (2, "np_max-act", "cats")}, n
        assert [e["category"] for e in doc["features"] if "label" in e] == ["animals"]
