"""A running export's view of its job, for stage tests without servers."""

from __future__ import annotations

from multiprocessing.context import SpawnProcess
from pathlib import Path

import pytest
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio_common import stages
from mistudio_common.dashboard import DashboardParams
from mistudio_common.jobs.control import JobControl
from mistudio_export.packaging import Compression, ExportFormat
from mistudio_export.peers import SaeRecord, TokenSource
from mistudio_export.plan import ExportPlan
from mistudio_export.records import NeuronpediaNaming
from mistudio_export.runtime import JobRuntime
from mistudio_export.selection import FeatureSelection
from mistudio_export.worker_pool import WorkerPool


def runtime(job_id: str, plan: ExportPlan, staging: Path) -> JobRuntime:
    """A job that reports and persists nowhere, and is never asked to stop; the processes it
    writes and validates in end with each stage."""
    return JobRuntime(
        job_id=job_id,
        plan=plan,
        staging=staging,
        checkpoint=jpb.ExportCheckpoint(),
        tracker=stages.tracker(job_id, plan.stages),
        control=JobControl(),
        publish=lambda _: None,
        persist=lambda: None,
        workers=WorkerPool(idle_seconds=0),
    )


@pytest.fixture
def job(tmp_path: Path) -> JobRuntime:
    plan = ExportPlan(
        sae=SaeRecord(sae_id="s", d_sae=4),
        owner="o",
        formats=frozenset({ExportFormat.NEURONPEDIA}),
        selection=FeatureSelection(),
        params=DashboardParams(),
        tokens=TokenSource(),
        gzip_json=False,
        zip_compression=Compression.STORED,
        delta_base_job_id="",
        merge_with_base=False,
        auto_fix=False,
        naming=NeuronpediaNaming("m", "set", 2, "me", "r", "R"),
        device="cpu",
        batch_size=4,
    )
    return runtime("job", plan, tmp_path)


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[SpawnProcess]:
    """The processes spawned during the test, as they start."""
    started: list[SpawnProcess] = []
    start = SpawnProcess.start

    def counted(process: SpawnProcess) -> None:
        started.append(process)
        start(process)

    monkeypatch.setattr(SpawnProcess, "start", counted)
    return started
