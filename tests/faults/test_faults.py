"""Faults are weather: an export finishes by itself through a kill -9 of compute, the store or
the export service, PostgreSQL stopping and starting, and the S3 server dying and coming back
empty, and its archive is byte-identical to an uninterrupted run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.computations import computation_id_for

from tests.export.service.stack import (
    D_IN,
    D_SAE,
    HOOK,
    STORIES_DIR,
    STORIES_REF,
    export_config,
    token_source,
    write_sae_folder,
    write_tokens,
)
from tests.faults.harness import (
    LEASE_SECONDS,
    FaultStack,
    exports_at,
    second_export,
    start_fault_stack,
)

pytestmark = pytest.mark.slow

SAE_ID = "fault-sae"

PASS_OUTLASTS_A_LEASE = 32768
"""Rows whose activation pass is still under way when a cancel lands, even one that waits out a
crashed holder's lease first (4,096 rows were done by then once the pass got faster)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    folder = tmp_path_factory.mktemp("faults")
    running = start_fault_stack(folder, [folder.parent, STORIES_DIR])
    try:
        register_sae(running, folder)
        yield running
    finally:
        running.stop()


def register_sae(stack: FaultStack, folder: Path) -> None:
    """The tiny SAE on stories260K as SAE_ID, its weights written under ``folder``."""
    sae = spb.Sae(
        sae_id=SAE_ID,
        model_id=STORIES_REF,
        hook_point=HOOK,
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=spb.ARCHITECTURE_STANDARD,
        weights_uri=str(write_sae_folder(folder / "sae")),
        training_dataset="local/random",
        neuronpedia_model_id="stories260k",
        neuronpedia_source_set="mistudio-res-32",
    )
    stack.records().CreateSae(spb.CreateSaeRequest(sae=sae), timeout=30)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tpb.TokenSource:
    folder = tmp_path_factory.mktemp("fault-tokens")
    return token_source(write_tokens(folder / "tokens.npy", rows=256, seed=11))


def config(tokens: tpb.TokenSource) -> epb.ExportConfig:
    return export_config(
        tokens,
        dashboard=dpb.DashboardParams(n_top_examples=20, histogram_scale=dpb.BIN_SCALE_LINEAR),
        batch_size=4,
        device="cpu",
    )


def start(stack: FaultStack, tokens: tpb.TokenSource) -> Iterator[epb.ExportProgress]:
    stack.forget_cached_dashboards()
    request = epb.StartExportRequest(sae_id=SAE_ID, config=config(tokens))
    return iter(stack.exports().StartExport(request, timeout=300))


@pytest.fixture(scope="module")
def uninterrupted(stack: FaultStack, tokens: tpb.TokenSource) -> str:
    """The archive's SHA-256 when nothing goes wrong."""
    stream = start(stack, tokens)
    job_id = next(stream).progress.job_id
    view = stack.finished(job_id)
    assert view.progress.state == ppb.JOB_STATE_SUCCEEDED, view.progress.error
    return view.result.archive_sha256


def fault(stack: FaultStack, target: str) -> None:
    if target == "postgres":
        stack.postgres.stop()
        time.sleep(2.0)
        stack.postgres.start()
        return
    service = stack.services[target]
    service.kill()
    time.sleep(1.0)
    service.start()


@pytest.mark.parametrize(
    ("target", "stage"),
    [
        ("compute", ppb.STAGE_ACTIVATION_PASS),
        ("compute", ppb.STAGE_LOGIT_LENS),
        ("store", ppb.STAGE_ACTIVATION_PASS),
        ("export", ppb.STAGE_ACTIVATION_PASS),
        ("postgres", ppb.STAGE_ACTIVATION_PASS),
        ("store", ppb.STAGE_GENERATING_FILES),
        ("export", ppb.STAGE_GENERATING_FILES),
        ("postgres", ppb.STAGE_GENERATING_FILES),
        ("s3", ppb.STAGE_GENERATING_FILES),
        ("s3", ppb.STAGE_CREATING_ARCHIVE),
    ],
)
def test_an_export_finishes_through_the_fault_with_the_same_archive(
    stack: FaultStack, tokens: tpb.TokenSource, uninterrupted: str, target: str, stage: int
) -> None:
    stream = start(stack, tokens)
    first = next(stream)
    job_id = first.progress.job_id
    reached = next((m for m in stream if m.progress.stage == stage), None)
    assert reached is not None and reached.progress.state == ppb.JOB_STATE_RUNNING
    fault(stack, target)
    view = stack.finished(job_id)
    assert view.progress.state == ppb.JOB_STATE_SUCCEEDED, view.progress.error
    assert view.result.archive_sha256 == uninterrupted
    stored = stack.records().GetExportJob(spb.GetExportJobRequest(job_id=job_id), timeout=30)
    assert stored.job.state == ppb.JOB_STATE_SUCCEEDED  # Get and the database agree
    # The export re-attached to its computation (which resumed from compute's checkpoint)
    # instead of starting a second one that computes every feature again.
    assert computations_of(stack, job_id) == [ppb.JOB_STATE_SUCCEEDED]


def holder_of(stack: FaultStack, job_id: str) -> str:
    request = spb.GetExportJobRequest(job_id=job_id)
    return stack.records().GetExportJob(request, timeout=30).job.holder


def instance_id(data_dir: str) -> str:
    return (Path(data_dir) / "export" / "instance-id").read_text().strip()


def test_a_second_export_service_adopts_a_running_job_only_after_its_holder_crashed(
    stack: FaultStack,
    tokens: tpb.TokenSource,
    uninterrupted: str,
    tmp_path: Path,
) -> None:
    second = second_export(stack, tmp_path)
    try:
        stream = start(stack, tokens)
        job_id = next(stream).progress.job_id
        first_id = instance_id(stack.export.env["MISTUDIO_EXPORT_DATA_DIR"])
        # The second service scans for adoptable jobs every second while the first runs this
        # one through its activation pass; the first's renewed lease keeps it off.
        reached = next(m for m in stream if m.progress.stage == ppb.STAGE_GENERATING_FILES)
        assert reached.progress.state == ppb.JOB_STATE_RUNNING
        assert holder_of(stack, job_id) == first_id
        stack.export.kill()
        view = stack.finished(job_id, via=second.port)
        assert view.progress.state == ppb.JOB_STATE_SUCCEEDED, view.progress.error
        assert view.result.archive_sha256 == uninterrupted
        stored = stack.records().GetExportJob(spb.GetExportJobRequest(job_id=job_id), timeout=30)
        assert stored.job.state == ppb.JOB_STATE_SUCCEEDED  # finished by the only live instance
    finally:
        second.stop()
        if stack.export.process is None or stack.export.process.poll() is not None:
            stack.export.start()


def states_everywhere(
    stack: FaultStack, job_id: str, *instances: egrpc.ExportServiceStub
) -> set[int]:
    """The job's state as Get and List on each instance, and the database, tell it."""
    states = {stack.records().GetExportJob(spb.GetExportJobRequest(job_id=job_id)).job.state}
    for exports in instances:
        states.add(
            exports.GetExport(epb.GetExportRequest(job_id=job_id), timeout=30).job.progress.state
        )
        listed = exports.ListExports(epb.ListExportsRequest(page_size=100), timeout=30).jobs
        states.update(j.state for j in listed if j.job_id == job_id)
    return states


def computation_state(stack: FaultStack, job_id: str, attempt: int = 0) -> ppb.JobState.ValueType:
    """The state of the export's dashboard computation ``attempt`` in the compute service."""
    compute = cgrpc.ComputeServiceStub(grpc.insecure_channel(f"127.0.0.1:{stack.compute.port}"))
    request = cpb.GetComputationRequest(job_id=computation_id_for(f"{job_id}/dashboards/{attempt}"))
    return compute.GetComputation(request, timeout=30).computation.progress.state


def computations_of(stack: FaultStack, job_id: str) -> list[ppb.JobState.ValueType]:
    """The states of every dashboard computation the export started, first to last."""
    states: list[ppb.JobState.ValueType] = []
    while True:
        try:
            states.append(computation_state(stack, job_id, attempt=len(states)))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            return states


def wait_for_computation_cancelled(stack: FaultStack, job_id: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while (state := computation_state(stack, job_id)) != ppb.JOB_STATE_CANCELLED:
        assert time.monotonic() < deadline, f"the computation is {ppb.JobState.Name(state)}"
        time.sleep(0.5)


def test_a_cancel_sent_to_an_instance_that_does_not_hold_the_job_stops_the_holders_run(
    stack: FaultStack, tmp_path: Path
) -> None:
    second = second_export(stack, tmp_path)
    many = token_source(write_tokens(tmp_path / "many.npy", rows=PASS_OUTLASTS_A_LEASE, seed=12))
    try:
        elsewhere = exports_at(second.port)
        job_id = next(start(stack, many)).progress.job_id
        watched = iter(elsewhere.WatchExport(epb.WatchExportRequest(job_id=job_id), timeout=300))
        # The instance that does not run the job follows its record: the watch sees it move.
        reached = next(m for m in watched if m.progress.stage == ppb.STAGE_ACTIVATION_PASS)
        assert reached.progress.state == ppb.JOB_STATE_RUNNING
        assert holder_of(stack, job_id) == instance_id(stack.export.env["MISTUDIO_EXPORT_DATA_DIR"])
        cancelled = elsewhere.CancelExport(epb.CancelExportRequest(job_id=job_id), timeout=60)
        assert cancelled.job.progress.state == ppb.JOB_STATE_CANCELLED
        assert [m.progress.state for m in watched][-1] == ppb.JOB_STATE_CANCELLED
        wait_for_computation_cancelled(stack, job_id)
        time.sleep(2 * LEASE_SECONDS)  # a holder that ran on would have written by now
        assert states_everywhere(stack, job_id, stack.exports(), elsewhere) == {
            ppb.JOB_STATE_CANCELLED
        }
    finally:
        second.stop()


def test_an_instance_that_does_not_hold_a_crashed_holders_job_cancels_it_and_its_computation(
    stack: FaultStack, tmp_path: Path
) -> None:
    second = second_export(stack, tmp_path)
    many = token_source(write_tokens(tmp_path / "many.npy", rows=PASS_OUTLASTS_A_LEASE, seed=13))
    try:
        elsewhere = exports_at(second.port)
        stream = start(stack, many)
        job_id = next(stream).progress.job_id
        next(m for m in stream if m.progress.stage == ppb.STAGE_ACTIVATION_PASS)
        request = spb.GetExportJobRequest(job_id=job_id)
        named = stack.records().GetExportJob(request, timeout=30).job.resume.compute
        assert named.computation_id == computation_id_for(f"{job_id}/dashboards/0")
        stack.export.kill()  # the holder dies while compute runs its computation
        cancelled = elsewhere.CancelExport(epb.CancelExportRequest(job_id=job_id), timeout=60)
        assert cancelled.job.progress.state == ppb.JOB_STATE_CANCELLED
        wait_for_computation_cancelled(stack, job_id)
        assert states_everywhere(stack, job_id, elsewhere) == {ppb.JOB_STATE_CANCELLED}
    finally:
        second.stop()
        if stack.export.process is None or stack.export.process.poll() is not None:
            stack.export.start()


def test_a_pause_sent_to_an_instance_that_does_not_hold_the_job_keeps_its_checkpoint(
    stack: FaultStack, tokens: tpb.TokenSource, uninterrupted: str, tmp_path: Path
) -> None:
    second = second_export(stack, tmp_path)
    try:
        elsewhere = exports_at(second.port)
        stream = start(stack, tokens)
        job_id = next(stream).progress.job_id
        next(m for m in stream if m.progress.stage == ppb.STAGE_ACTIVATION_PASS)
        paused = elsewhere.PauseExport(epb.PauseExportRequest(job_id=job_id), timeout=60)
        assert paused.job.progress.state == ppb.JOB_STATE_PAUSED
        assert next(
            m for m in stream if m.progress.state != ppb.JOB_STATE_RUNNING
        ).progress.state == (ppb.JOB_STATE_PAUSED)
        assert states_everywhere(stack, job_id, stack.exports(), elsewhere) == {
            ppb.JOB_STATE_PAUSED
        }
        elsewhere.ResumeExport(epb.ResumeExportRequest(job_id=job_id), timeout=60)
        view = stack.finished(job_id, via=second.port)
        assert view.progress.state == ppb.JOB_STATE_SUCCEEDED, view.progress.error
        assert view.result.archive_sha256 == uninterrupted
        # The first instance's stream follows the job the second one finished.
        assert [m.progress.state for m in stream][-1] == ppb.JOB_STATE_SUCCEEDED
        assert states_everywhere(stack, job_id, stack.exports(), elsewhere) == {
            ppb.JOB_STATE_SUCCEEDED
        }
    finally:
        second.stop()
