"""Cancel, pause/resume and a restart of the export service in the middle of a job."""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from pathlib import Path

import grpc
import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.server import insecure_channel
from mistudio_export.formats.jsonio import PARTIAL_SUFFIX
from mistudio_export.server import build_export_server

from tests.export.service.errors import details
from tests.export.service.stack import (
    Stack,
    export_config,
    run_to_end,
    token_source,
    wait_for,
    write_tokens,
)

SLOW_ROWS = 384
"""Enough token rows that the activation pass lasts a few seconds on two CPU cores."""


@pytest.fixture(scope="module")
def slow_tokens(workdir: Path) -> tpb.TokenSource:
    return token_source(write_tokens(workdir / "slow-tokens.npy", rows=SLOW_ROWS, seed=7))


def slow_config(tokens: tpb.TokenSource, n_top_examples: int) -> epb.ExportConfig:
    """Parameters no other test uses, so the dashboards are computed, not taken from the cache."""
    return export_config(
        tokens,
        # Linear bins: log-scale bin centres collapse when SAEDashboard batches round them.
        dashboard=dpb.DashboardParams(
            n_top_examples=n_top_examples, histogram_scale=dpb.BIN_SCALE_LINEAR
        ),
        batch_size=4,
        device="cpu",
    )


def computing(message: epb.ExportProgress) -> bool:
    return message.progress.stage == ppb.STAGE_ACTIVATION_PASS


def stored_state(stack: Stack, job_id: str) -> int:
    return stack.records.GetExportJob(spb.GetExportJobRequest(job_id=job_id)).job.state


def test_cancel_stops_the_job_and_leaves_nothing_behind(
    stack: Stack, sae_id: str, slow_tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(sae_id=sae_id, config=slow_config(slow_tokens, 21))
    stream = stack.exports.StartExport(request)
    job_id = wait_for(stream, computing).progress.job_id
    view = stack.exports.CancelExport(epb.CancelExportRequest(job_id=job_id)).job
    assert view.progress.state == ppb.JOB_STATE_CANCELLED
    last = run_to_end(stream)[-1]
    assert last.progress.state == ppb.JOB_STATE_CANCELLED
    assert last.progress.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert stored_state(stack, job_id) == ppb.JOB_STATE_CANCELLED
    assert not (stack.data_dir / "export" / job_id).exists()
    assert not (stack.data_dir / "archives" / "exports" / job_id).exists()
    with pytest.raises(grpc.RpcError) as caught:
        stack.exports.GetDownloadUrl(epb.GetDownloadUrlRequest(job_id=job_id))
    assert details(caught.value)["code"] == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        stack.exports.ResumeExport(epb.ResumeExportRequest(job_id=job_id))
    assert details(caught.value)["code"] == grpc.StatusCode.FAILED_PRECONDITION


def test_paused_job_resumes_and_finishes(
    stack: Stack, sae_id: str, slow_tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(sae_id=sae_id, config=slow_config(slow_tokens, 22))
    stream = stack.exports.StartExport(request)
    job_id = wait_for(stream, computing).progress.job_id
    paused = stack.exports.PauseExport(epb.PauseExportRequest(job_id=job_id)).job
    assert paused.progress.state == ppb.JOB_STATE_PAUSED
    assert stored_state(stack, job_id) == ppb.JOB_STATE_PAUSED
    seen = wait_for(stream, lambda m: m.progress.state == ppb.JOB_STATE_PAUSED)
    stack.exports.ResumeExport(epb.ResumeExportRequest(job_id=job_id))
    rest = run_to_end(stream)
    assert rest[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert rest[0].progress.sequence > seen.progress.sequence
    assert rest[-1].result.feature_count == 32


def paused_computation(stack: Stack, job_id: str) -> tuple[str, int]:
    """The compute job a paused export left waiting, and its state in the compute service."""
    resume = stack.records.GetExportJob(spb.GetExportJobRequest(job_id=job_id)).job.resume
    compute_job = resume.compute.computation_id
    compute = cgrpc.ComputeServiceStub(insecure_channel(stack.compute.address))
    got = compute.GetComputation(cpb.GetComputationRequest(job_id=compute_job))
    return compute_job, got.computation.progress.state


def test_pausing_an_export_pauses_its_computation_and_resuming_continues_it(
    stack: Stack, sae_id: str, slow_tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(sae_id=sae_id, config=slow_config(slow_tokens, 24))
    stream = stack.exports.StartExport(request)
    job_id = wait_for(stream, computing).progress.job_id
    stack.exports.PauseExport(epb.PauseExportRequest(job_id=job_id))
    compute_job, state = paused_computation(stack, job_id)
    assert state == ppb.JOB_STATE_PAUSED
    stack.exports.ResumeExport(epb.ResumeExportRequest(job_id=job_id))
    assert run_to_end(stream)[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    compute = cgrpc.ComputeServiceStub(insecure_channel(stack.compute.address))
    resumed = compute.GetComputation(cpb.GetComputationRequest(job_id=compute_job))
    assert resumed.computation.progress.state == ppb.JOB_STATE_SUCCEEDED  # the same computation


def test_cancelling_a_paused_export_cancels_its_waiting_computation(
    stack: Stack, sae_id: str, slow_tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(sae_id=sae_id, config=slow_config(slow_tokens, 25))
    stream = stack.exports.StartExport(request)
    job_id = wait_for(stream, computing).progress.job_id
    stack.exports.PauseExport(epb.PauseExportRequest(job_id=job_id))
    compute_job, _ = paused_computation(stack, job_id)
    stack.exports.CancelExport(epb.CancelExportRequest(job_id=job_id))
    compute = cgrpc.ComputeServiceStub(insecure_channel(stack.compute.address))
    got = compute.GetComputation(cpb.GetComputationRequest(job_id=compute_job))
    assert got.computation.progress.state == ppb.JOB_STATE_CANCELLED


def test_restarted_service_resumes_a_running_job(
    stack: Stack, sae_id: str, slow_tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(sae_id=sae_id, config=slow_config(slow_tokens, 23))
    stream = stack.exports.StartExport(request)
    before = wait_for(stream, computing)
    job_id = before.progress.job_id
    stack.export.stop(grace_seconds=1.0)
    assert stored_state(stack, job_id) == ppb.JOB_STATE_RUNNING
    with pytest.raises(grpc.RpcError):
        run_to_end(stream)
    out = stack.data_dir / "export" / job_id / "out"
    half_written = out / f".metadata.json.k1ll3d{PARTIAL_SUFFIX}"  # as a killed writer leaves
    out.mkdir(parents=True, exist_ok=True)
    half_written.write_bytes(b'{"half": ')
    stack.export = build_export_server(stack.settings())
    messages = run_to_end(stack.exports.WatchExport(epb.WatchExportRequest(job_id=job_id)))
    assert messages[0].progress.sequence > before.progress.sequence
    last = messages[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    archive = b"".join(
        m.chunk for m in stack.exports.DownloadExport(epb.DownloadExportRequest(job_id=job_id))
    )
    packed = zipfile.ZipFile(io.BytesIO(archive))
    assert packed.testzip() is None
    assert not half_written.exists()
    assert not [n for n in packed.namelist() if n.endswith(PARTIAL_SUFFIX)]


def test_deleting_a_running_export_cancels_it_and_removes_its_record_and_staging(
    stack: Stack, sae_id: str, slow_tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(sae_id=sae_id, config=slow_config(slow_tokens, 26))
    stream = stack.exports.StartExport(request)
    job_id = wait_for(stream, computing).progress.job_id
    stack.exports.DeleteExport(epb.DeleteExportRequest(job_id=job_id))
    assert run_to_end(stream)[-1].progress.state == ppb.JOB_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as caught:
        stack.exports.GetExport(epb.GetExportRequest(job_id=job_id))
    assert details(caught.value)["code"] == grpc.StatusCode.NOT_FOUND
    assert not (stack.data_dir / "export" / job_id).exists()


def test_deleting_a_finished_export_removes_its_archive_and_its_summary(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(sae_id=sae_id, config=export_config(tokens))
    last = run_to_end(stack.exports.StartExport(request))[-1]
    job_id = last.progress.job_id
    archive = stack.data_dir / "archives" / last.result.output_uri
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED and archive.is_file()
    listed = stack.exports.ListExports(epb.ListExportsRequest(sae_id=sae_id)).jobs
    summary = next(s for s in listed if s.job_id == job_id)
    assert (summary.state, summary.fraction) == (ppb.JOB_STATE_SUCCEEDED, 1.0)
    assert summary.config_summary == "all formats; all features"
    stack.exports.DeleteExport(epb.DeleteExportRequest(job_id=job_id))
    assert not archive.exists()
    listed = stack.exports.ListExports(epb.ListExportsRequest(sae_id=sae_id)).jobs
    assert job_id not in {s.job_id for s in listed}


def test_what_vanished_or_crashed_exports_left_goes_after_the_retention_time(
    stack: Stack, sae_id: str, slow_tokens: tpb.TokenSource
) -> None:
    """The engine's retention pass removes a gone job's staging folder and an archive upload a
    crash left half written, once older than the staging retention; a running job's stays."""
    request = epb.StartExportRequest(sae_id=sae_id, config=slow_config(slow_tokens, 27))
    stream = stack.exports.StartExport(request)
    running = wait_for(stream, computing).progress.job_id
    (stack.data_dir / "export" / running).mkdir(parents=True, exist_ok=True)
    stray = stack.data_dir / "export" / uuid.uuid4().hex
    (stray / "work").mkdir(parents=True)
    (stray / "work" / "chunk-000000.pb").write_bytes(b"dashboards")
    half_written = stack.data_dir / "archives" / ".tmp" / "put-crashed"
    half_written.parent.mkdir(parents=True, exist_ok=True)
    half_written.write_bytes(b"half an archive")
    retention = stack.settings().staging_retention_seconds
    stack.export.manager.retain(now=time.time() + retention / 2)
    assert stray.is_dir() and half_written.is_file()  # not old enough yet
    stack.export.manager.retain(now=time.time() + retention + 1)
    assert not stray.exists() and not half_written.exists()
    assert (stack.data_dir / "export" / running).is_dir()
    stack.exports.CancelExport(epb.CancelExportRequest(job_id=running))
