"""`pause`, `resume`, `estimate`, `labels`, `upload`, `list`/`status` and the CLI's own checks.

Commands run in-process through ``main`` against a real stack on loopback (addresses given), so
each call costs no interpreter start; `list`/`status` on the local store run as a subprocess to
show that they start nothing but the store.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_cli.main import build_parser, main
from mistudio_cli.options import model_reference, token_source
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.upload_payloads import write_upload_payloads

from tests.export.formats.builders import dashboard, naming
from tests.export.service.stack import (
    STORIES_REF,
    Stack,
    export_config,
    register_sae,
    start_stack,
    wait_for,
    write_sae_folder,
    write_tokens,
)
from tests.export.service.stack import (
    token_source as stack_tokens,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-commands")


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[Stack]:
    running = start_stack(workdir / "data")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def sae_id(stack: Stack, workdir: Path) -> str:
    return register_sae(stack, "cli-sae", str(write_sae_folder(workdir / "sae"))).sae_id


@pytest.fixture(scope="module")
def tokens_file(workdir: Path) -> Path:
    return write_tokens(workdir / "tokens.npy", rows=32)


def addresses(stack: Stack) -> list[str]:
    return ["--export-address", stack.export.address, "--store-address", stack.store.address]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def options_of(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub_parser in action.choices.items():
                yield from ((f"{name} {flag}", a) for flag, a in options_of(sub_parser))
        elif action.option_strings:
            yield action.option_strings[-1], action


def test_help_states_the_default_of_every_option_that_takes_a_value() -> None:
    missing = [
        name
        for name, action in options_of(build_parser())
        if action.nargs != 0 and action.default is not None and "default" not in action.help
    ]
    assert missing == []


def test_help_shows_the_services_dashboard_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "top examples per feature, 20-100 (default: 20)" in help_text
    assert "--top-tokens TOP_TOKENS (default: 20)" in help_text


def test_help_never_shows_the_token_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISTUDIO_TOKEN", "tok-secret-4711")
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    assert "tok-secret-4711" not in capsys.readouterr().out


def test_text_together_with_tokens_is_an_error_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(
        capsys, "run", "some-sae", "--tokens", "t.npy", "--text", "a.txt",
        "--export-address", "127.0.0.1:1",
    )  # fmt: skip
    assert code == 2
    assert err.startswith("error [--text]:") and "--tokens" in err


def test_relative_paths_are_made_absolute_before_they_are_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["run", "s", "--text", "a.txt", "sub/b.txt"])
    assert list(token_source(args).text.paths) == [
        str(tmp_path / "a.txt"),
        str(tmp_path / "sub" / "b.txt"),
    ]
    args = build_parser().parse_args(["run", "s", "--tokens", "tokens.npy"])
    assert token_source(args).token_file == str(tmp_path / "tokens.npy")
    assert model_reference("llama2c:m/stories.bin?tokenizer=tok.bin") == (
        f"llama2c:{tmp_path / 'm' / 'stories.bin'}?tokenizer={tmp_path / 'tok.bin'}"
    )
    assert model_reference("gpt2-small") == "gpt2-small"


def test_service_errors_name_the_cli_flag_not_the_proto_field(
    capsys: pytest.CaptureFixture[str], stack: Stack, sae_id: str, tokens_file: Path
) -> None:
    code, _, err = run_cli(
        capsys, "run", sae_id, "--tokens", str(tokens_file), "--examples", "5", *addresses(stack)
    )
    assert code == 2
    assert err.startswith("error [--examples]:"), err
    assert "n_top_examples" not in err


def test_estimate_reports_features_time_size_and_memory_and_creates_no_job(
    capsys: pytest.CaptureFixture[str], stack: Stack, sae_id: str, tokens_file: Path
) -> None:
    before = stack.exports.ListExports(epb.ListExportsRequest(sae_id=sae_id)).jobs
    code, out, err = run_cli(
        capsys, "estimate", sae_id, "--tokens", str(tokens_file), "--features", "0:10",
        *addresses(stack),
    )  # fmt: skip
    assert code == 0, err
    assert "features:   10 (to compute 10, cached 0)" in out
    assert "time:" in out and "size:" in out
    assert "Activation pass" in out and "Creating archive" in out  # the time per stage
    assert "MiB at peak in the compute service" in out
    assert stack.exports.ListExports(epb.ListExportsRequest(sae_id=sae_id)).jobs == before


def test_labels_from_csv_set_labels_and_categories(
    capsys: pytest.CaptureFixture[str], stack: Stack, sae_id: str, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("feature_index,label,category\n3,dog names,animals\n7,numbers,\n")
    code, out, err = run_cli(capsys, "labels", sae_id, str(labels), *addresses(stack))
    assert code == 0, err
    assert out.strip() == f"set the labels and categories of 2 features of {sae_id}"
    stored = stack.records.ListFeatures(spb.ListFeaturesRequest(sae_id=sae_id)).features
    assert {(f.feature_index, f.label, f.category) for f in stored} >= {
        (3, "dog names", "animals"),
        (7, "numbers", ""),
    }


def test_labels_from_json_replace_earlier_ones(
    capsys: pytest.CaptureFixture[str], stack: Stack, sae_id: str, tmp_path: Path
) -> None:
    first = tmp_path / "first.csv"
    first.write_text("feature_index,label,category\n11,old,kept\n")
    assert run_cli(capsys, "labels", sae_id, str(first), *addresses(stack))[0] == 0
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"feature_index": 11, "label": "new", "category": "c"}]))
    assert run_cli(capsys, "labels", sae_id, str(labels), *addresses(stack))[0] == 0
    stored = stack.records.ListFeatures(spb.ListFeaturesRequest(sae_id=sae_id)).features
    assert [(f.label, f.category) for f in stored if f.feature_index == 11] == [("new", "c")]


def test_labels_outside_the_sae_are_refused_before_anything_is_stored(
    capsys: pytest.CaptureFixture[str], stack: Stack, sae_id: str, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("feature_index,label\n1,fine\n999,too far\n")
    code, _, err = run_cli(capsys, "labels", sae_id, str(labels), *addresses(stack))
    assert code == 2 and "999" in err
    stored = stack.records.ListFeatures(spb.ListFeaturesRequest(sae_id=sae_id)).features
    assert "fine" not in {f.label for f in stored}


def test_a_bad_labels_file_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], stack: Stack, sae_id: str, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("feature_index,label\nthree,dogs\n")
    code, _, err = run_cli(capsys, "labels", sae_id, str(labels), *addresses(stack))
    assert code == 2
    assert err.startswith("error [FILE]:") and "'three'" in err and "fix:" in err


@pytest.mark.slow
def test_pause_then_resume_a_running_export(
    capsys: pytest.CaptureFixture[str], stack: Stack, sae_id: str, workdir: Path
) -> None:
    slow = stack_tokens(write_tokens(workdir / "slow.npy", rows=384, seed=9))
    stream = stack.exports.StartExport(
        epb.StartExportRequest(
            request_id="cli-pause", sae_id=sae_id, config=export_config(slow, batch_size=4)
        )
    )
    running = wait_for(stream, lambda m: m.progress.stage == ppb.STAGE_ACTIVATION_PASS)
    job_id = running.progress.job_id
    stream.cancel()
    code, out, err = run_cli(capsys, "pause", job_id, *addresses(stack))
    assert code == 0, err
    assert out.startswith(job_id) and "paused" in out
    code, out, err = run_cli(capsys, "resume", job_id, *addresses(stack))
    assert code == 0, err
    assert "paused" not in out
    watch = stack.exports.WatchExport(epb.WatchExportRequest(job_id=job_id))
    last = wait_for(
        watch, lambda m: m.progress.state in (ppb.JOB_STATE_SUCCEEDED, ppb.JOB_STATE_FAILED)
    )
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED


def test_list_and_status_read_the_local_store_without_starting_the_stack(
    tmp_path: Path,
) -> None:
    script = (
        "import sys\n"
        "from mistudio_cli.main import main\n"
        f"assert main(['list', '--data-dir', {str(tmp_path)!r}]) == 0\n"
        f"assert main(['status', 'no-such-job', '--data-dir', {str(tmp_path)!r}]) == 2\n"
        "started = [m for m in ('mistudio_compute.server', 'mistudio_export.server', 'torch')"
        " if m in sys.modules]\n"
        "assert not started, started\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "error [job_id]" in result.stderr or "no-such-job" in result.stderr


class RateLimitedNeuronpedia(HTTPServer):
    """Answers the first POST with 429 and Retry-After: 0, then 200; records every request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str]] = []
        self.rate_limited = 1

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api"


class _Handler(BaseHTTPRequestHandler):
    server: RateLimitedNeuronpedia

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, self.headers["X-Api-Key"]))
        if self.server.rate_limited:
            self.server.rate_limited -= 1
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(json.dumps({"features": len(body["features"])}).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def neuronpedia() -> Iterator[RateLimitedNeuronpedia]:
    server = RateLimitedNeuronpedia()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    folder = tmp_path / "export" / "upload-payloads"
    folder.mkdir(parents=True)
    write_upload_payloads(folder, naming(), column_batches(dashboard(i) for i in range(130)))
    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for file in folder.iterdir():
            zf.write(file, f"upload-payloads/{file.name}")
    return path


def test_upload_lists_the_payloads_without_send(
    capsys: pytest.CaptureFixture[str], neuronpedia: RateLimitedNeuronpedia, archive: Path
) -> None:
    code, out, _ = run_cli(capsys, "upload", str(archive), "--base-url", neuronpedia.base_url)
    assert code == 0
    assert out.count("would POST upload-batch-") == 2
    assert neuronpedia.requests == []


def test_upload_backs_off_on_429_and_sends_every_payload(
    capsys: pytest.CaptureFixture[str],
    neuronpedia: RateLimitedNeuronpedia,
    archive: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEURONPEDIA_API_KEY", "secret")
    code, out, err = run_cli(
        capsys, "upload", str(archive), "--send", "--base-url", neuronpedia.base_url
    )
    assert code == 0, err
    assert neuronpedia.requests == [("/api/feature/upload-batch", "secret")] * 3
    assert "upload-batch-0.json: HTTP 200, 128 features" in out
    assert "upload-batch-1.json: HTTP 200, 2 features" in out


@pytest.mark.slow
def test_run_of_a_registered_sae_needs_only_the_export_address(
    capsys: pytest.CaptureFixture[str], stack: Stack, sae_id: str, tokens_file: Path
) -> None:
    code, out, err = run_cli(
        capsys, "run", sae_id, "--tokens", str(tokens_file), "--features", "0:4",
        "--export-address", stack.export.address,
    )  # fmt: skip
    assert code == 0, err
    assert "complete" in out


@pytest.mark.slow
def test_run_for_another_owner_registers_the_folder_as_theirs_and_exports_it_for_them(
    capsys: pytest.CaptureFixture[str], stack: Stack, workdir: Path, tokens_file: Path
) -> None:
    folder = write_sae_folder(workdir / "bobs-sae", seed=3)
    labels = workdir / "bobs-labels.csv"
    labels.write_text("feature_index,label\n1,bob's dogs\n")
    code, out, err = run_cli(
        capsys, "run", str(folder), "--owner", "bob", "--sae-id", "bobs-sae", "--model",
        STORIES_REF, "--labels", str(labels), "--tokens", str(tokens_file), "--features", "0:4",
        *addresses(stack), "--compute-address", stack.compute.address,
    )  # fmt: skip
    assert code == 0, err
    assert "complete" in out
    assert (
        stack.records.GetSae(spb.GetSaeRequest(sae_id="bobs-sae", owner="bob")).sae.owner == "bob"
    )
    features = stack.records.ListFeatures(spb.ListFeaturesRequest(sae_id="bobs-sae", owner="bob"))
    assert [(f.feature_index, f.label) for f in features.features if f.label] == [(1, "bob's dogs")]
    jobs = stack.exports.ListExports(epb.ListExportsRequest(sae_id="bobs-sae", owner="bob")).jobs
    assert [job.state for job in jobs] == [ppb.JOB_STATE_SUCCEEDED]
