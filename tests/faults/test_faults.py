"""Faults are weather: an export finishes by itself through a kill -9 of compute, the store or
the export service, PostgreSQL stopping and starting, and the S3 server dying and coming back
empty, and its archive is byte-identical to an uninterrupted run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb

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
from tests.faults.harness import FaultStack, second_export, start_fault_stack

pytestmark = pytest.mark.slow

SAE_ID = "fault-sae"


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
        ("store", ppb.STAGE_ACTIVATION_PASS),
        ("export", ppb.STAGE_ACTIVATION_PASS),
        ("postgres", ppb.STAGE_ACTIVATION_PASS),
        ("store", ppb.STAGE_GENERATING_FILES),
        ("export", ppb.STAGE_GENERATING_FILES),
        ("postgres", ppb.STAGE_GENERATING_FILES),
        ("s3", ppb.STAGE_GENERATING_FILES),
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
