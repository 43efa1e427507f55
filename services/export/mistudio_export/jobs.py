"""Export jobs: started, watched, paused, resumed and cancelled outside any RPC handler.

Each job runs the pipeline in a worker thread. Its state, progress snapshot and checkpoint live
in the store (``job_records``), so a restarted service resumes RUNNING jobs from their last
checkpoint. Watchers attach to a per-job channel whose first message is the current snapshot.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Protocol

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.errors import FailedPrecondition, MistudioError, NotFound
from mistudio_common.progress import TERMINAL_STATES, JobChannel, ProgressTracker
from mistudio_common.retry import Patience, is_transient

from mistudio_export import views
from mistudio_export.clients import StoreClient
from mistudio_export.config import ExportSettings
from mistudio_export.job_records import JobEntry, JobRecorder, new_tracker
from mistudio_export.plan import ExportPlan
from mistudio_export.runtime import Interruption, JobControl, JobInterrupted, JobRuntime

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    def run(self, job: JobRuntime) -> jpb.ExportOutcome: ...

    def release(self, checkpoint: jpb.ExportCheckpoint) -> None: ...

    def discard(self, job_id: str) -> None: ...


class Planner(Protocol):
    def plan(self, sae_id: str, config: epb.ExportConfig, owner: str) -> ExportPlan: ...

    def check(self, plan: ExportPlan) -> list[str]: ...


class ExportJobManager:
    """Owns every export job this process runs or watches."""

    def __init__(
        self, settings: ExportSettings, store: StoreClient, planner: Planner, pipeline: Pipeline
    ) -> None:
        self._settings = settings
        self._store = store
        self._planner = planner
        self._pipeline = pipeline
        patience = Patience(settings.fault_patience_seconds)
        self._records = JobRecorder(store, settings.progress_persist_seconds, patience)
        self._entries: dict[str, JobEntry] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max(1, settings.max_concurrent_jobs))
        self._shutdown = threading.Event()

    # -- starting and attaching ------------------------------------------------------------

    def start(self, request: epb.StartExportRequest) -> str:
        """Checks the request, creates the job (or finds the one with this request_id); the
        servicer has set ``owner`` to the owner of the SAE it exports (the caller's own, for a
        user)."""
        owner = request.owner
        plan = self._planner.plan(request.sae_id, request.config, owner)
        self._planner.check(plan)
        job_id = uuid.uuid4().hex
        tracker = new_tracker(job_id, plan, None)
        record = spb.ExportJob(
            job_id=job_id,
            sae_id=request.sae_id,
            sae_owner=plan.sae.owner,
            owner=owner,
            request_id=request.request_id or job_id,
            config=request.config,
            state=ppb.JOB_STATE_QUEUED,
            progress=tracker.snapshot(),
        )
        stored, created = self._store.create_job(record)
        if created:
            self._launch(stored, plan, tracker)
        return str(stored.job_id)

    def channel(self, job_id: str) -> JobChannel[epb.ExportProgress]:
        """The job's progress channel: its latest message first, then updates until a
        terminal state (a finished job's channel holds just its final message)."""
        stored = self._store.get_job(job_id)
        if stored.state in TERMINAL_STATES:
            return JobChannel(views.message_of(stored), views.is_terminal)
        return self._entry(stored).channel

    @property
    def stopping(self) -> bool:
        return self._shutdown.is_set()

    def view(self, job_id: str) -> epb.ExportJobView:
        stored = self._store.get_job(job_id)
        with self._lock:
            entry = self._entries.get(job_id)
        # A running job's progress here is fresher than the (throttled) record; a finished
        # job's record is final and may have changed since (ValidateArchive repairs).
        live = entry.channel.latest if entry is not None else None
        if live is not None and (
            stored.state in TERMINAL_STATES or live.progress.sequence < stored.progress.sequence
        ):
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
            jobs=[views.summary_of(job) for job in page.jobs], next_page_token=page.next_page_token
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
                self._pipeline.release(entry.checkpoint)
                self._records.cancelled(entry, stored)
        return self.view(job_id)

    def delete(self, job_id: str) -> None:
        """Removes the job's archive, staging and record; a job that has not finished is
        cancelled first, so no worker runs on for a job that no longer exists."""
        stored = self._store.get_job(job_id)
        if stored.state not in TERMINAL_STATES:
            self.cancel(job_id)
        self._pipeline.discard(job_id)
        shutil.rmtree(self.staging_dir(job_id), ignore_errors=True)
        self._store.delete_job(job_id)
        with self._lock:
            self._entries.pop(job_id, None)

    def pause(self, job_id: str) -> epb.ExportJobView:
        stored = self._store.get_job(job_id)
        if stored.state in (ppb.JOB_STATE_QUEUED, ppb.JOB_STATE_RUNNING):
            entry = self._entry(stored)
            if not self._interrupt(entry, Interruption.PAUSE):
                self._records.paused(entry, stored, "paused")
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

    def _entry(self, stored: spb.ExportJob) -> JobEntry:
        with self._lock:
            entry = self._entries.get(stored.job_id)
            if entry is None:
                entry = JobEntry.of(stored, self.staging_dir(stored.job_id))
                self._entries[stored.job_id] = entry
            return entry

    def _resume_stored(self, stored: spb.ExportJob) -> None:
        config = stored.config
        entry = self._entry(stored)
        try:
            plan = self._planner.plan(stored.sae_id, config, stored.owner)
        except MistudioError as error:
            self._records.failed(entry, stored, error)
            return
        tracker = entry.tracker or new_tracker(stored.job_id, plan, stored.progress)
        if not entry.running:
            # Recorded before the worker starts, so a Get or Watch right after ResumeExport
            # sees the job queued again, never the FAILED it is leaving.
            entry.tracker = tracker
            self._records.queued(entry)
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

    def _work(self, entry: JobEntry, stored: spb.ExportJob, plan: ExportPlan) -> None:
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
                staging=entry.staging,
                checkpoint=entry.checkpoint,
                tracker=tracker,
                control=control,
                publish=lambda progress: self._records.publish(entry, progress),
                persist=lambda: self._records.persist(entry, ppb.JOB_STATE_RUNNING),
            )
            outcome = self._run_patiently(entry, runtime, not stored.HasField("started_at"))
            self._records.succeeded(entry, outcome)
        except JobInterrupted as stop:
            if stop.reason is Interruption.SHUTDOWN:
                self._records.parked(entry)
            elif stop.reason is Interruption.PAUSE:
                self._records.paused(entry, stored, "paused at a checkpoint")
            else:
                self._records.cancelled(entry, stored)
        except Exception as error:  # every failure is recorded on the job, never swallowed
            self._records.failed(entry, stored, error)
        finally:
            if acquired:
                self._slots.release()

    def _run_patiently(
        self, entry: JobEntry, runtime: JobRuntime, first_start: bool
    ) -> jpb.ExportOutcome:
        """Runs the pipeline; a transient fault (a peer, the database or the object store out
        of reach) is waited out with backoff and the run resumes from the last checkpoint.
        Patience restarts whenever the checkpoint moved on since the last fault."""
        delays = self._records.patience.delays()
        reached = entry.checkpoint.SerializeToString(deterministic=True)
        while True:
            try:
                self._records.running(entry, first_start)
                first_start = False
                return self._pipeline.run(runtime)
            except MistudioError as error:
                if not is_transient(error):
                    raise
                now = entry.checkpoint.SerializeToString(deterministic=True)
                if now != reached:
                    delays, reached = self._records.patience.delays(), now
                delay = next(delays, None)
                if delay is None:
                    raise
                log.warning("export waits out a fault: %s", error, extra={"job_id": entry.job_id})
                self._records.waiting(entry, error, delay)
                runtime.control.sleep(delay)
                runtime.control.check()

    def _interrupt(self, entry: JobEntry, reason: Interruption) -> bool:
        """Asks a running worker to stop; True when one was running (and has now stopped)."""
        if not entry.running or entry.control is None or entry.thread is None:
            return False
        entry.control.request(reason)
        entry.thread.join(self._settings.control_wait_seconds)
        return True

    def staging_removable(self, job_id: str) -> bool:
        """Whether a staging folder is only disk use: its job is gone, succeeded or cancelled."""
        try:
            stored = self._store.get_job(job_id)
        except NotFound:
            return True
        return stored.state in (ppb.JOB_STATE_SUCCEEDED, ppb.JOB_STATE_CANCELLED)

    def staging_dir(self, job_id: str) -> Path:
        return self._settings.data_dir / "export" / job_id


def _cannot(job_id: str, state: int, action: str) -> FailedPrecondition:
    name = ppb.JobState.Name(state).removeprefix("JOB_STATE_").lower()  # type: ignore[arg-type]
    return FailedPrecondition(
        f"export {job_id} is {name}; it cannot {action}",
        field="job_id",
        fix="pause or cancel only queued or running exports; resume only paused or failed ones",
    )
