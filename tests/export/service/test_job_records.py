"""What the export writes to the store while a job runs: progress often, the checkpoint only
when it changes (it holds a hash per feature, too large to rewrite with every progress write)."""

from __future__ import annotations

from pathlib import Path

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_export import views
from mistudio_export.clients import StoreClient
from mistudio_export.job_records import JobEntry, JobRecorder

from tests.export.service.stack import Stack, export_config, run_to_end


def stored_job(stack: Stack, job_id: str) -> spb.ExportJob:
    return stack.records.GetExportJob(spb.GetExportJobRequest(job_id=job_id)).job


def test_progress_writes_leave_the_checkpoint_to_explicit_saves(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, tmp_path: Path
) -> None:
    request = epb.StartExportRequest(
        request_id="records", sae_id=sae_id, config=export_config(tokens)
    )
    job_id = run_to_end(stack.exports.StartExport(request))[-1].progress.job_id
    before = stored_job(stack, job_id)
    entry = JobEntry.of(before, tmp_path)
    entry.checkpoint["not_saved_yet"] = {"feature_hashes": {str(i): "ab" * 32 for i in range(64)}}
    recorder = JobRecorder(StoreClient(stack.store.address), persist_seconds=0.0)
    progress = ppb.Progress(
        job_id=job_id, sequence=before.progress.sequence + 1, state=before.state
    )

    recorder.publish(entry, progress)  # persist_seconds=0: every message is written
    written = stored_job(stack, job_id)
    assert written.progress.sequence == progress.sequence
    assert written.checkpoint == before.checkpoint

    recorder.persist(entry, written.state)
    saved = views.dict_of(stored_job(stack, job_id).checkpoint)
    assert saved["not_saved_yet"] == entry.checkpoint["not_saved_yet"]
