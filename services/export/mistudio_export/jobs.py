"""Export jobs on the common job engine: what is particular to an export.

A start plans and checks the request before any job exists, then records it in the store under
this instance's lease; the engine runs, watches, pauses, resumes, cancels and recovers it. A
failed export keeps its checkpoint and staging so ResumeExport can retry from there.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.errors import NotFound
from mistudio_common.jobs.engine import JobEngine
from mistudio_common.jobs.kind import Leasing, Retention, Snapshot, first_progress
from mistudio_common.jobs.running import RunningJob
from mistudio_common.progress import TERMINAL_STATES, JobChannel, StageId
from mistudio_common.retention import FolderSweeper
from mistudio_common.retry import Patience

from mistudio_export import views
from mistudio_export.clients import StoreClient
from mistudio_export.config import ExportSettings
from mistudio_export.job_store import ExportRecord, StoreJobStore, record_of
from mistudio_export.messages import export_options_from_pb
from mistudio_export.options import ExportOptions
from mistudio_export.plan import ExportPlan
from mistudio_export.runtime import JobRuntime
from mistudio_export.worker_pool import WorkerPool

ExportSnapshot = Snapshot[jpb.ExportOutcome]


class Pipeline(Protocol):
    def run(self, job: JobRuntime) -> jpb.ExportOutcome: ...

    def release(self, checkpoint: jpb.ExportCheckpoint) -> None: ...

    def discard(self, job_id: str) -> None: ...

    def remove_unfinished_uploads(self, before: float) -> int: ...


class Planner(Protocol):
    def plan(self, sae_id: str, options: ExportOptions, owner: str) -> ExportPlan: ...

    def check(self, plan: ExportPlan) -> list[str]: ...


@dataclass(frozen=True)
class _ExportWork:
    plan: ExportPlan
    staging: Path
    pipeline: Pipeline
    workers: WorkerPool

    @property
    def stages(self) -> Sequence[StageId]:
        return self.plan.stages

    def run(self, job: RunningJob[jpb.ExportCheckpoint]) -> jpb.ExportOutcome:
        return self.pipeline.run(JobRuntime.of(job, self.plan, self.staging, self.workers))


class _ExportKind:
    """What the engine needs to know of exports: how to plan one again and what to free."""

    failure_note = " (the job keeps its checkpoint: ResumeExport retries from there)"

    def __init__(
        self,
        store: StoreClient,
        planner: Planner,
        pipeline: Pipeline,
        workers: WorkerPool,
        root: Path,
    ):
        self._store, self._planner, self._pipeline = store, planner, pipeline
        self._workers, self._root = workers, root

    def staging(self, job_id: str) -> Path:
        return self._root / job_id

    def work(self, plan: ExportPlan, job_id: str) -> _ExportWork:
        return _ExportWork(plan, self.staging(job_id), self._pipeline, self._workers)

    def prepare(self, record: ExportRecord) -> _ExportWork:
        stored = self._store.get_job(record.job_id)
        options = export_options_from_pb(stored.config)  # as the job's start planned it
        plan = self._planner.plan(stored.sae_id, options, stored.owner)
        return self.work(plan, record.job_id)

    def ended(
        self, job_id: str, state: ppb.JobState.ValueType, checkpoint: jpb.ExportCheckpoint
    ) -> None:
        if state == ppb.JOB_STATE_CANCELLED:
            self._pipeline.release(checkpoint)
        if state != ppb.JOB_STATE_FAILED:
            shutil.rmtree(self.staging(job_id), ignore_errors=True)

    def expire(self, job_id: str) -> None:
        """Removes a finished job's archive, staging and record (retention, or DeleteExport)."""
        self._pipeline.discard(job_id)
        shutil.rmtree(self.staging(job_id), ignore_errors=True)
        self._store.delete_job(job_id)


@dataclass(frozen=True)
class _ExportLeftovers:
    """What exports leave besides their records: staging folders of jobs that succeeded, were
    cancelled or are gone, and archive uploads a crash left unfinished, each removed once
    older than ``seconds`` (a FAILED job keeps its staging for ResumeExport)."""

    staging: FolderSweeper
    pipeline: Pipeline
    seconds: float

    def remove(self, now: float | None = None) -> None:
        self.staging.sweep(now)
        self.pipeline.remove_unfinished_uploads(
            (time.time() if now is None else now) - self.seconds
        )


def retention_of(settings: ExportSettings, leftovers: _ExportLeftovers) -> Retention:
    """Finished exports are kept until deleted unless a retention time is set."""
    seconds = settings.finished_job_retention_seconds
    return Retention(seconds if seconds > 0 else None, settings.retention_sweep_seconds, leftovers)


def progress_message(snapshot: ExportSnapshot) -> epb.ExportProgress:
    message = epb.ExportProgress(progress=snapshot.progress)
    if snapshot.outcome is not None and snapshot.outcome.HasField("result"):
        message.result.CopyFrom(snapshot.outcome.result)
    return message


class ExportJobManager:
    """Owns every export job this process runs or watches."""

    def __init__(
        self,
        settings: ExportSettings,
        store: StoreClient,
        planner: Planner,
        pipeline: Pipeline,
        workers: WorkerPool,
        instance_id: str | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._planner = planner
        self._pipeline = pipeline
        root = settings.data_dir / "export"
        self._kind = _ExportKind(store, planner, pipeline, workers, root)
        jobs = StoreJobStore(store)
        self._leasing = Leasing(instance_id or uuid.uuid4().hex, jobs, settings.lease_seconds)
        self._engine: JobEngine[jpb.ExportCheckpoint, jpb.ExportOutcome] = JobEngine(
            jobs,
            self._kind,
            patience=Patience(settings.fault_patience_seconds),
            persist_seconds=settings.progress_persist_seconds,
            max_running=max(1, settings.max_concurrent_jobs),
            leasing=self._leasing,
            follow_seconds=settings.follow_seconds,
            retention=retention_of(settings, self._leftovers(settings, root)),
        )

    # -- starting and attaching ------------------------------------------------------------

    def start(self, request_id: str, sae_id: str, owner: str, config: epb.ExportConfig) -> str:
        """Checks the export, creates the job (or finds the one with this request_id); ``owner``
        owns the SAE it exports (the caller, for a user). The job records ``config`` as given and
        plans from its plain values, as a resumed job does from the record."""
        plan = self._planner.plan(sae_id, export_options_from_pb(config), owner)
        self._planner.check(plan)
        job_id = uuid.uuid4().hex
        lease_ends = datetime.now(UTC) + timedelta(seconds=self._leasing.seconds)
        record = spb.ExportJob(
            job_id=job_id,
            sae_id=sae_id,
            sae_owner=plan.sae.owner,
            owner=owner,
            request_id=request_id or job_id,
            config=config,
            state=ppb.JOB_STATE_QUEUED,
            progress=first_progress(job_id, plan.stages),
            holder=self._leasing.holder,
        )
        record.lease_expires_at.FromDatetime(lease_ends)
        with self._engine.starting(job_id):
            stored, created = self._store.create_job(record)
            if created:
                self._engine.launch(record_of(stored), self._kind.work(plan, stored.job_id))
        return str(stored.job_id)

    def channel(self, job_id: str) -> JobChannel[ExportSnapshot]:
        """The job's progress channel: its latest message first, then updates until an end
        state (a finished job's channel holds just its final message)."""
        return self._engine.channel(job_id)

    @property
    def stopping(self) -> bool:
        return self._engine.stopping

    def view(self, job_id: str) -> epb.ExportJobView:
        stored = self._store.get_job_message(job_id)
        # A running job's progress here is fresher than the (throttled) record, and an end
        # state the store could not take yet is newer still; a stored end state is final and
        # may have changed since (ValidateArchive repairs).
        live = self._engine.live(job_id)
        if live is not None and (
            (stored.state in TERMINAL_STATES and not live.final)
            or live.progress.sequence < stored.progress.sequence
        ):
            live = None
        return views.view_of(stored, progress_message(live) if live is not None else None)

    def list_jobs(
        self, page_size: int, page_token: str, sae_id: str, owner: str
    ) -> epb.ListExportsResponse:
        page = self._store.list_jobs(
            page_size=page_size, page_token=page_token, sae_id=sae_id, owner=owner
        )
        return epb.ListExportsResponse(
            jobs=[views.summary_of(job) for job in page.jobs], next_page_token=page.next_page_token
        )

    # -- control ---------------------------------------------------------------------------

    def cancel(self, job_id: str) -> epb.ExportJobView:
        self._engine.cancel(job_id, self._settings.control_wait_seconds)
        return self.view(job_id)

    def pause(self, job_id: str) -> epb.ExportJobView:
        self._engine.pause(job_id, self._settings.control_wait_seconds)
        return self.view(job_id)

    def resume(self, job_id: str) -> epb.ExportJobView:
        self._engine.resume(job_id)
        return self.view(job_id)

    def delete(self, job_id: str) -> None:
        """Removes the job's archive, staging and record; a job that has not finished is
        cancelled first, so no worker runs on for a job that no longer exists."""
        stored = self._store.get_job(job_id)
        if stored.state not in TERMINAL_STATES:
            self._engine.cancel(job_id, self._settings.control_wait_seconds)
        self._kind.expire(job_id)
        self._engine.forget(job_id)

    def retain(self, now: float | None = None) -> list[str]:
        """One retention pass (the engine runs one every ``retention_sweep_seconds``): finished
        exports past their retention, then leftover staging and unfinished uploads."""
        return self._engine.retain(now)

    def resume_unfinished(self) -> None:
        """After a restart: continue every job left running that no live instance holds."""
        self._engine.recover()

    def shutdown(self, timeout_seconds: float = 10.0) -> None:
        """Stops every worker at its next checkpoint, leaving its job RUNNING for a restart."""
        self._engine.shutdown(timeout_seconds)

    def _leftovers(self, settings: ExportSettings, root: Path) -> _ExportLeftovers:
        seconds, every = settings.staging_retention_seconds, settings.retention_sweep_seconds
        staging = FolderSweeper(root, seconds, self.staging_removable, every)
        return _ExportLeftovers(staging, self._pipeline, seconds)

    def staging_removable(self, job_id: str) -> bool:
        """Whether a staging folder is only disk use: its job is gone, succeeded or cancelled."""
        try:
            stored = self._store.get_job(job_id)
        except NotFound:
            return True
        return stored.state in (ppb.JOB_STATE_SUCCEEDED, ppb.JOB_STATE_CANCELLED)

    def staging_dir(self, job_id: str) -> Path:
        return self._kind.staging(job_id)
