"""An earlier archive in the object store is reused only when it is exactly what its job wrote:
injected content or a damaged ZIP is skipped with a log line, never copied, never fatal; and
ValidateArchive answers a hostile stored archive with a report."""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb

from tests.export.service.stack import Stack, export_config, run_to_end

NEURONPEDIA_ONLY = [epb.EXPORT_FORMAT_NEURONPEDIA]
INJECTED = b'{"feature_index": 0, "injected": "<script>alert(1)</script>"}'


def export(stack: Stack, sae_id: str, config: epb.ExportConfig) -> str:
    request = epb.StartExportRequest(sae_id=sae_id, config=config)
    last = run_to_end(stack.exports.StartExport(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    return last.progress.job_id


def stored_archive(stack: Stack, job_id: str) -> Path:
    """The job's archive in the local object store (what an attacker with write access edits);
    only the store's folder is searched, not staging that is still being removed."""
    return next((stack.data_dir / "archives").rglob(f"exports/{job_id}/*.zip"))


def features(stack: Stack, job_id: str) -> dict[str, bytes]:
    stream = stack.exports.DownloadExport(epb.DownloadExportRequest(job_id=job_id))
    zf = zipfile.ZipFile(io.BytesIO(b"".join(m.chunk for m in stream)))
    return {name: zf.read(name) for name in zf.namelist() if name.startswith("features/")}


def merge_with(base: str, tokens: tpb.TokenSource) -> epb.ExportConfig:
    return export_config(
        tokens, formats=NEURONPEDIA_ONLY, delta_base_job_id=base, merge_with_base=True
    )


def inject(archive: Path) -> None:
    """Replaces one feature file, keeping the manifest (and everything else) as it was."""
    with zipfile.ZipFile(archive) as zf:
        entries = {info: zf.read(info) for info in zf.infolist()}
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries.items():
            zf.writestr(info, INJECTED if info.filename == "features/0.json" else data)


@pytest.fixture
def base(stack: Stack, sae_id: str, tokens: tpb.TokenSource) -> str:
    return export(stack, sae_id, export_config(tokens, formats=NEURONPEDIA_ONLY))


def test_injected_content_is_not_copied_into_a_new_export(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, base: str, caplog: pytest.LogCaptureFixture
) -> None:
    original = features(stack, base)
    archive = stored_archive(stack, base)
    inject(archive)
    tampered = archive.read_bytes()
    with caplog.at_level(logging.WARNING):
        merged = export(stack, sae_id, merge_with(base, tokens))
    assert features(stack, merged) == original
    assert any("not reused" in r.getMessage() for r in caplog.records)
    assert archive.read_bytes() == tampered


def test_a_corrupted_earlier_archive_is_skipped_not_fatal(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, base: str, caplog: pytest.LogCaptureFixture
) -> None:
    original = features(stack, base)
    archive = stored_archive(stack, base)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        merged = export(stack, sae_id, merge_with(base, tokens))
    assert features(stack, merged) == original
    assert any("not reused" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("hostile", "code"),
    [
        (lambda: zip_bytes({"features/0.json": bytes(64 << 20)}), "ARCHIVE_LIMIT"),
        (lambda: b"PK\x03\x04 truncated, not an archive", "FILE_UNREADABLE"),
    ],
)
def test_validate_archive_reports_on_a_hostile_stored_archive(
    stack: Stack, base: str, hostile: Callable[[], bytes], code: str
) -> None:
    archive = stored_archive(stack, base)
    archive.write_bytes(hostile())
    stored = archive.read_bytes()
    request = epb.ValidateArchiveRequest(job_id=base, auto_fix=True)
    answer = stack.exports.ValidateArchive(request)
    assert not answer.summary.valid
    assert code in {p.code for p in answer.problems}
    assert archive.read_bytes() == stored


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()
