"""Export jobs: started, watched, paused, resumed and cancelled outside any RPC handler.

Each job runs the pipeline in a worker thread. Its state, progress snapshot and checkpoint live
in the store, so a restarted service resumes RUNNING jobs from their last checkpoint. Watchers
attach to a per-job channel whose first message is the current snapshot.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import json_format, timestamp_pb2
from google.rpc import code_pb2, status_pb2
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.errors import FailedPrecondition, MistudioError
from mistudio_common.grpc_errors import status_from_error
from mistudio_common.progress import JobChannel, ProgressTracker

from mistudio_export import views
from mistudio_export.clients import StoreClient
from mistudio_export.config import ExportSettings
from mistudio_export.plan import ExportPlan
from mistudio_export.runtime import Interruption, JobControl, JobInterrupted, JobRuntime

log = logging.getLogger(__name__)

SEQUENCE_GAP = 1000
"""Progress is persisted at least every this many messages; a restart skips this far ahead so
sequence numbers keep increasing even for messages published but never persisted."""

_STAGE_WEIGHTS = {
    ppb.STAGE_VALIDATING: 1.0,
    ppb.STAGE_ACTIVATION_PASS: 10.0,
    ppb.STAGE_LOADING_EXAMPLES: 3.0,
    ppb.STAGE_LOGIT_LENS: 2.0,
    ppb.STAGE_HISTOGRAMS: 2.0,
    ppb.STAGE_TOKEN_AGGREGATION: 2.0,
    ppb.STAGE_GENERATING_FILES: 5.0,
    ppb.STAGE_VALIDATING_OUTPUT: 2.0,
    ppb.STAGE_CREATING_ARCHIVE: 2.0,
}


class Pipeline(Protocol):
    def run(self, job: JobRuntime) -> epb.ExportResult: ...


class Planner(Protocol):
    def plan(self, sae_id: str, config: epb.ExportConfig, owner: str) -> ExportPlan: ...

    def check(self, plan: ExportPlan) -> list[str]: ...


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def new_tracker(job_id: str, plan: ExportPlan, stored: ppb.Progress | None) -> ProgressTracker:
    stages = plan.stages
    first = stored.sequence + SEQUENCE_GAP if stored is not None and stored.sequence else 0
    tracker = ProgressTracker(
        job_id, stages, [_STAGE_WEIGHTS.get(s, 1.0) for s in stages], first_sequence=first
    )
    if stored is not None and stored.stages:
        tracker.restore(stored)
    return tracker


@dataclass
class _Entry:
    """What this process holds for one job it has seen."""

    job_id: str
    channel: JobChannel[epb.ExportProgress]
    tracker: ProgressTracker | None = None
    control: JobControl | None = None
    thread: threading.Thread | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    persisted_at: float = 0.0
    unpersisted: int = 0

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class ExportJobManager:
    """Owns every export job this process runs or watches."""

    def __init__(
        self, settings: ExportSettings, store: StoreClient, planner: Planner, pipeline: Pipeline
    ) -> None:
        self._settings = settings
        self._store = store
        self._planner = planner
        self._pipeline = pipeline
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max(1, settings.max_concurrent_jobs))
        self._shutdown = threading.Event()

    # -- starting and attaching ------------------------------------------------------------

    def start(self, request: epb.StartExportRequest) -> str:
        """Checks the request, creates the job (or finds the one with this request_id)."""
        owner = request.owner or self._settings.default_owner
        plan = self._planner.plan(request.sae_id, request.config, owner)
        self._planner.check(plan)
        job_id = uuid.uuid4().hex
        tracker = new_tracker(job_id, plan, None)
        record = spb.ExportJob(
            job_id=job_id,
            sae_id=request.sae_id,
            owner=owner,
            request_id=request.request_id or job_id,
            config=views.config_struct(request.config),
            state=ppb.JOB_STATE_QUEUED,
            progress=tracker.snapshot(),
        )
        stored, created = self._store.create_job(record)
        if created:
            self._launch(stored, plan, tracker)
        return str(stored.job_id)

    def watch(
        self, job_id: str, still_wanted: Callable[[], bool] = lambda: True
    ) -> Iterator[epb.ExportProgress]:
        """The job's progress stream: a snapshot first, then updates until a terminal state."""
        stored = self._store.get_job(job_id)
        entry = self._entry(stored)

        def wanted() -> bool:
            return still_wanted() and not self._shutdown.is_set()

        return entry.channel.watch(wanted)

    def view(self, job_id: str) -> epb.ExportJobView:
        stored = self._store.get_job(job_id)
        with self._lock:
            entry = self._entries.get(job_id)
        live = entry.channel.latest if entry is not None else None
        if live is not None and live.progress.sequence < stored.progress.sequence:
            live = None
        return views.view_of(stored, live)

    def list_jobs(self, request: epb.ListExportsRequest) -> epb.ListExportsResponse:
        page = self._store.list_jobs(
            page_size=request.page_size,
            page_token=request.page_token,
            sae_id=request.sae_id,
            owner=request.owner,
        )
        return epb.ListExportsResponse(
            jobs=[views.view_of(job) for job in page.jobs], next_page_token=page.next_page_token
        )

    # -- control ---------------------------------------------------------------------------

    def cancel(self, job_id: str) -> epb.ExportJobView:
        stored = self._store.get_job(job_id)
        if stored.state == ppb.JOB_STATE_SUCCEEDED:
            raise FailedPrecondition(
                f"export {job_id} has already succeeded; there is nothing to cancel",
                field="job_id",
                fix="delete the archive from the object store if it is no longer wanted",
            )
        if stored.state != ppb.JOB_STATE_CANCELLED:
            entry = self._entry(stored)
            if not self._interrupt(entry, Interruption.CANCEL):
                self._finish_cancelled(entry, stored)
        return self.view(job_id)

    def pause(self, job_id: str) -> epb.ExportJobView:
        stored = self._store.get_job(job_id)
        if stored.state in (ppb.JOB_STATE_QUEUED, ppb.JOB_STATE_RUNNING):
            entry = self._entry(stored)
            if not self._interrupt(entry, Interruption.PAUSE):
                self._set_idle_state(entry, stored, ppb.JOB_STATE_PAUSED, "paused")
        elif stored.state != ppb.JOB_STATE_PAUSED:
            raise _cannot(job_id, stored.state, "pause")
        return self.view(job_id)

    def resume(self, job_id: str) -> epb.ExportJobView:
        stored = self._store.get_job(job_id)
        if stored.state in (ppb.JOB_STATE_SUCCEEDED, ppb.JOB_STATE_CANCELLED):
            raise _cannot(job_id, stored.state, "resume")
        entry = self._entry(stored)
        if not entry.running:
            self._resume_stored(stored)
        return self.view(job_id)

    def resume_unfinished(self) -> None:
        """After a restart: continue every job that was running or queued when it stopped."""
        states = [ppb.JOB_STATE_RUNNING, ppb.JOB_STATE_QUEUED]
        for stored in list(self._store.all_jobs(states=states)):
            log.info("resuming export", extra={"job_id": stored.job_id})
            self._resume_stored(stored)

    def shutdown(self, timeout_seconds: float = 10.0) -> None:
        """Stops every worker at its next checkpoint, leaving its job RUNNING for a restart."""
        self._shutdown.set()
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            if entry.control is not None:
                entry.control.wake()
        deadline = time.monotonic() + timeout_seconds
        for entry in entries:
            if entry.thread is not None:
                entry.thread.join(max(0.0, deadline - time.monotonic()))

    # -- internals -------------------------------------------------------------------------

    def _entry(self, stored: spb.ExportJob) -> _Entry:
        with self._lock:
            entry = self._entries.get(stored.job_id)
            if entry is None:
                channel = JobChannel(views.message_of(stored), views.is_terminal)
                entry = _Entry(stored.job_id, channel, checkpoint=_checkpoint_of(stored))
                self._entries[stored.job_id] = entry
            return entry

    def _resume_stored(self, stored: spb.ExportJob) -> None:
        config = views.config_of(stored)
        entry = self._entry(stored)
        try:
            plan = self._planner.plan(stored.sae_id, config, stored.owner)
        except MistudioError as error:
            self._fail(entry, stored, None, error)
            return
        tracker = entry.tracker or new_tracker(stored.job_id, plan, stored.progress)
        self._launch(stored, plan, tracker)

    def _launch(self, stored: spb.ExportJob, plan: ExportPlan, tracker: ProgressTracker) -> None:
        entry = self._entry(stored)
        if entry.running or self._shutdown.is_set():
            return
        entry.tracker = tracker
        entry.control = JobControl(self._shutdown)
        entry.thread = threading.Thread(
            target=self._work,
            args=(entry, stored, plan),
            name=f"export-{stored.job_id[:8]}",
            daemon=True,
        )
        entry.thread.start()

    def _work(self, entry: _Entry, stored: spb.ExportJob, plan: ExportPlan) -> None:
        assert entry.control is not None and entry.tracker is not None
        control, tracker = entry.control, entry.tracker
        acquired = False
        try:
            while not (acquired := self._slots.acquire(timeout=0.2)):
                control.check()
            control.check()
            runtime = JobRuntime(
                job_id=entry.job_id,
                plan=plan,
                staging=self.staging_dir(entry.job_id),
                checkpoint=entry.checkpoint,
                tracker=tracker,
                control=control,
                publish=lambda progress: self._publish(entry, progress),
                persist=lambda: self._persist(entry, ppb.JOB_STATE_RUNNING),
            )
            self._publish(entry, tracker.set_state(ppb.JOB_STATE_RUNNING))
            fields = ["started_at"] if not stored.HasField("started_at") else []
            self._persist(entry, ppb.JOB_STATE_RUNNING, extra=fields)
            result = self._pipeline.run(runtime)
            self._succeed(entry, result)
        except JobInterrupted as stop:
            self._interrupted(entry, stored, stop.reason)
        except Exception as error:  # every failure is recorded on the job, never swallowed
            self._fail(entry, stored, tracker, error)
        finally:
            if acquired:
                self._slots.release()

    def _publish(self, entry: _Entry, progress: ppb.Progress) -> None:
        """Sends progress to watchers; persists it at most every few seconds (or 100 messages)."""
        entry.channel.publish(epb.ExportProgress(progress=progress))
        entry.unpersisted += 1
        due = time.monotonic() - entry.persisted_at >= self._settings.progress_persist_seconds
        if due or entry.unpersisted >= SEQUENCE_GAP // 10:
            self._persist(entry, progress.state or ppb.JOB_STATE_RUNNING)

    def _persist(
        self,
        entry: _Entry,
        state: ppb.JobState.ValueType,
        *,
        extra: list[str] | None = None,
        record: spb.ExportJob | None = None,
    ) -> None:
        job = record or spb.ExportJob()
        job.job_id = entry.job_id
        job.state = state
        if not job.HasField("progress"):
            job.progress.CopyFrom(entry.channel.latest.progress)
        job.checkpoint.CopyFrom(views.struct_of(entry.checkpoint))
        fields = ["state", "progress", "checkpoint", *(extra or [])]
        if "started_at" in fields:
            job.started_at.CopyFrom(_now())
        if "finished_at" in fields:
            job.finished_at.CopyFrom(_now())
        self._store.update_job(job, fields)
        entry.persisted_at = time.monotonic()
        entry.unpersisted = 0

    def _succeed(self, entry: _Entry, result: epb.ExportResult) -> None:
        assert entry.tracker is not None
        entry.checkpoint[views.RESULT_KEY] = views.result_json(result)
        progress = entry.tracker.set_state(ppb.JOB_STATE_SUCCEEDED, "export finished")
        record = spb.ExportJob(
            output_uri=result.output_uri,
            output_size_bytes=result.size_bytes,
            feature_count=result.feature_count,
        )
        record.progress.CopyFrom(progress)
        extra = ["output_uri", "output_size_bytes", "feature_count", "finished_at"]
        self._persist(entry, ppb.JOB_STATE_SUCCEEDED, extra=extra, record=record)
        shutil.rmtree(self.staging_dir(entry.job_id), ignore_errors=True)
        entry.channel.publish(epb.ExportProgress(progress=progress, result=result))

    def _interrupted(self, entry: _Entry, stored: spb.ExportJob, reason: Interruption) -> None:
        if reason is Interruption.SHUTDOWN:
            self._safe_persist(entry, ppb.JOB_STATE_RUNNING)
        elif reason is Interruption.PAUSE:
            self._set_idle_state(entry, stored, ppb.JOB_STATE_PAUSED, "paused at a checkpoint")
        else:
            self._finish_cancelled(entry, stored)

    def _set_idle_state(
        self, entry: _Entry, stored: spb.ExportJob, state: ppb.JobState.ValueType, note: str
    ) -> None:
        tracker = entry.tracker
        if tracker is not None:
            progress = tracker.set_state(state, note)
        else:
            progress = views.progress_of(stored)
            progress.state, progress.message = state, note
            progress.sequence += SEQUENCE_GAP
        record = spb.ExportJob()
        record.progress.CopyFrom(progress)
        self._persist(entry, state, record=record)
        entry.channel.publish(epb.ExportProgress(progress=progress))

    def _finish_cancelled(self, entry: _Entry, stored: spb.ExportJob) -> None:
        shutil.rmtree(self.staging_dir(entry.job_id), ignore_errors=True)
        entry.checkpoint.clear()
        error = status_pb2.Status(code=code_pb2.CANCELLED, message="cancelled by request")
        self._terminal(entry, stored, ppb.JOB_STATE_CANCELLED, error)

    def _fail(
        self,
        entry: _Entry,
        stored: spb.ExportJob,
        tracker: ProgressTracker | None,
        error: BaseException,
    ) -> None:
        if not isinstance(error, MistudioError):
            log.exception("export failed", exc_info=error, extra={"job_id": entry.job_id})
        status = status_from_error(error)
        status.message += " (the job keeps its checkpoint: ResumeExport retries from there)"
        record = spb.ExportJob(error_message=status.message)
        record.error_details.update(json_format.MessageToDict(status))
        entry.tracker = tracker or entry.tracker
        self._terminal(entry, stored, ppb.JOB_STATE_FAILED, status, record)

    def _terminal(
        self,
        entry: _Entry,
        stored: spb.ExportJob,
        state: ppb.JobState.ValueType,
        error: status_pb2.Status,
        record: spb.ExportJob | None = None,
    ) -> None:
        if entry.tracker is not None:
            progress = entry.tracker.set_state(state, error.message, error)
        else:
            progress = views.progress_of(stored)
            progress.sequence += SEQUENCE_GAP
            progress.state, progress.message = state, error.message
            progress.error.CopyFrom(error)
        extra = ["finished_at"]
        if record is not None:
            extra += ["error_message", "error_details"]
        record = record or spb.ExportJob()
        record.progress.CopyFrom(progress)
        try:
            self._persist(entry, state, extra=extra, record=record)
        except MistudioError:
            log.exception("could not record the job's end", extra={"job_id": entry.job_id})
        entry.channel.publish(epb.ExportProgress(progress=progress))

    def _safe_persist(self, entry: _Entry, state: ppb.JobState.ValueType) -> None:
        try:
            self._persist(entry, state)
        except MistudioError:
            log.warning("could not persist progress at shutdown", extra={"job_id": entry.job_id})

    def _interrupt(self, entry: _Entry, reason: Interruption) -> bool:
        """Asks a running worker to stop; True when one was running (and has now stopped)."""
        if not entry.running or entry.control is None or entry.thread is None:
            return False
        entry.control.request(reason)
        entry.thread.join(self._settings.control_wait_seconds)
        return True

    def staging_dir(self, job_id: str) -> Path:
        return self._settings.data_dir / "export" / job_id


def _checkpoint_of(stored: spb.ExportJob) -> dict[str, Any]:
    return views.dict_of(stored.checkpoint) if stored.HasField("checkpoint") else {}


def _cannot(job_id: str, state: int, action: str) -> FailedPrecondition:
    name = ppb.JobState.Name(state).removeprefix("JOB_STATE_").lower()  # type: ignore[arg-type]
    return FailedPrecondition(
        f"export {job_id} is {name}; it cannot {action}",
        field="job_id",
        fix="pause or cancel only queued or running exports; resume only paused or failed ones",
    )
