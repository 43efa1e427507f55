"""`with_preview`: the export puts the dashboard viewer into its archive; the CLI previews a job."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import grpc
import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_cli.main import main
from mistudio_export.preview import PREVIEW_DIR
from mistudio_export.validation import validate_export

from tests.export.service.errors import details
from tests.export.service.stack import D_SAE, Stack, export_config, run_to_end

VIEWER_FILES = {f"{PREVIEW_DIR}/{name}" for name in ("index.html", "viewer.js", "viewer.css")}


@pytest.fixture(scope="module")
def finished(stack: Stack, sae_id: str, tokens: tpb.TokenSource) -> epb.ExportProgress:
    config = export_config(tokens, formats=[epb.EXPORT_FORMAT_NEURONPEDIA], with_preview=True)
    request = epb.StartExportRequest(request_id="preview", sae_id=sae_id, config=config)
    last = run_to_end(stack.exports.StartExport(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    return last


@pytest.fixture(scope="module")
def archive(stack: Stack, finished: epb.ExportProgress) -> zipfile.ZipFile:
    request = epb.DownloadExportRequest(job_id=finished.progress.job_id)
    data = b"".join(m.chunk for m in stack.exports.DownloadExport(request))
    return zipfile.ZipFile(io.BytesIO(data))


def test_archive_carries_the_viewer_and_its_data(archive: zipfile.ZipFile) -> None:
    names = set(archive.namelist())
    data = {f"{PREVIEW_DIR}/data/index.js", f"{PREVIEW_DIR}/data/chunk-0.js"}
    assert VIEWER_FILES | data <= names
    index = archive.read(f"{PREVIEW_DIR}/data/index.js").decode()
    listing = json.loads(index.removeprefix("miStudioPreview.loadIndex(").removesuffix(");\n"))
    assert [row[0] for row in listing["features"]] == list(range(D_SAE))


def test_manifest_lists_every_viewer_file(archive: zipfile.ZipFile) -> None:
    listed = {entry["path"] for entry in json.loads(archive.read("manifest.json"))["files"]}
    viewer = {name for name in archive.namelist() if name.startswith(PREVIEW_DIR + "/")}
    assert viewer and viewer <= listed


def test_archive_with_the_viewer_validates_clean(
    archive: zipfile.ZipFile, finished: epb.ExportProgress, tmp_path: Path
) -> None:
    assert finished.result.validation.valid and finished.result.validation.warning_count == 0
    archive.extractall(tmp_path)
    report = validate_export(tmp_path)
    assert report.ok and not report.problems, report.summary()


def test_archive_readme_points_at_the_viewer(archive: zipfile.ZipFile) -> None:
    assert "preview/index.html" in archive.read("README.md").decode()


def test_with_preview_without_the_neuronpedia_format_is_refused(stack: Stack, sae_id: str) -> None:
    config = export_config(formats=[epb.EXPORT_FORMAT_SAELENS], with_preview=True)
    request = epb.StartExportRequest(request_id="preview-saelens", sae_id=sae_id, config=config)
    with pytest.raises(grpc.RpcError) as raised:
        run_to_end(stack.exports.StartExport(request))
    found = details(raised.value)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["config.with_preview"]


def test_cli_previews_a_finished_job_through_the_export_service(
    stack: Stack, finished: epb.ExportProgress, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "viewer"
    job_id = finished.progress.job_id
    code = main(["preview", job_id, "--output", str(out), "--export-address", stack.export.address])
    assert code == 0, capsys.readouterr().err
    assert f"preview of {D_SAE} features" in capsys.readouterr().out
    assert (out / "index.html").is_file() and (out / "data" / "chunk-0.js").is_file()
