"""How a job's life reaches its watchers and its record in the store.

Every state change is written to the store first and then published, so a watcher that sees a
state can always read the same state back with GetExport. Progress between checkpoints is
persisted at most every few seconds; sequence numbers stay monotonic across restarts because a
restarted tracker skips ahead by more than the messages that can go unpersisted.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format, timestamp_pb2
from google.rpc import code_pb2, status_pb2
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common import stages
from mistudio_common.errors import MistudioError
from mistudio_common.grpc_errors import status_from_error
from mistudio_common.progress import JobChannel, ProgressTracker
from mistudio_common.retry import Patience, call_with_patience

from mistudio_export import views
from mistudio_export.clients import StoreClient
from mistudio_export.plan import ExportPlan
from mistudio_export.runtime import JobControl

log = logging.getLogger(__name__)

SEQUENCE_GAP = 1000
"""Progress is persisted at least every SEQUENCE_GAP // 10 messages; a restart skips this far
ahead so sequence numbers keep increasing even for messages published but never persisted."""


def new_tracker(job_id: str, plan: ExportPlan, stored: ppb.Progress | None) -> ProgressTracker:
    first = stored.sequence + SEQUENCE_GAP if stored is not None and stored.sequence else 0
    tracker = stages.tracker(job_id, plan.stages, first)
    if stored is not None and stored.stages:
        tracker.restore(stored)
    return tracker


@dataclass
class JobEntry:
    """What this process holds for one job it has seen."""

    job_id: str
    channel: JobChannel[epb.ExportProgress]
    staging: Path
    tracker: ProgressTracker | None = None
    control: JobControl | None = None
    thread: threading.Thread | None = None
    checkpoint: jpb.ExportCheckpoint = field(default_factory=jpb.ExportCheckpoint)
    persisted_at: float = 0.0
    unpersisted: int = 0

    @classmethod
    def of(cls, stored: spb.ExportJob, staging: Path) -> JobEntry:
        channel = JobChannel(views.message_of(stored), views.is_terminal)
        checkpoint = jpb.ExportCheckpoint()
        checkpoint.CopyFrom(stored.resume)
        return cls(stored.job_id, channel, staging, checkpoint=checkpoint)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


class JobRecorder:
    """Writes a job's progress and state changes to the store and to its watchers."""

    def __init__(
        self, store: StoreClient, persist_seconds: float, patience: Patience | None = None
    ) -> None:
        self._store = store
        self._persist_seconds = persist_seconds
        self.patience = patience or Patience()

    def publish(self, entry: JobEntry, progress: ppb.Progress) -> None:
        """Sends progress to watchers; persists it every few seconds (or 100 messages). These
        writes leave the checkpoint out: it changes only through ``persist`` (``JobRuntime.save``)
        and can be large (a feature hash per feature), which made every progress write cost
        O(features) and a 16k-feature export's archive stage 8x slower than a 4k one's."""
        entry.channel.publish(epb.ExportProgress(progress=progress))
        entry.unpersisted += 1
        due = time.monotonic() - entry.persisted_at >= self._persist_seconds
        if due or entry.unpersisted >= SEQUENCE_GAP // 10:
            self.persist(entry, progress.state or ppb.JOB_STATE_RUNNING, checkpoint=False)

    def persist(
        self,
        entry: JobEntry,
        state: ppb.JobState.ValueType,
        *,
        extra: list[str] | None = None,
        record: spb.ExportJob | None = None,
        checkpoint: bool = True,
    ) -> None:
        """Writes state, progress (the record's, else the latest) and, unless told not to, the
        checkpoint."""
        job = record or spb.ExportJob()
        job.job_id = entry.job_id
        job.state = state
        if not job.HasField("progress"):
            job.progress.CopyFrom(entry.channel.latest.progress)
        fields = ["state", "progress", *(extra or [])]
        if checkpoint:
            if entry.checkpoint.ByteSize():
                job.resume.CopyFrom(entry.checkpoint)
            fields.append("resume")
        if "started_at" in fields:
            job.started_at.CopyFrom(_now())
        if "finished_at" in fields:
            job.finished_at.CopyFrom(_now())
        self._store.update_job(job, fields)
        entry.persisted_at = time.monotonic()
        entry.unpersisted = 0

    def queued(self, entry: JobEntry) -> None:
        """A job about to (re)start: its record and watchers leave any earlier end state."""
        assert entry.tracker is not None
        progress = entry.tracker.set_state(ppb.JOB_STATE_QUEUED, "resuming from its checkpoint")
        self.persist(entry, ppb.JOB_STATE_QUEUED, record=spb.ExportJob(progress=progress))
        entry.channel.publish(epb.ExportProgress(progress=progress))

    def waiting(self, entry: JobEntry, error: MistudioError, delay: float) -> None:
        """Tells watchers why a running job stalls; the store may be what is down, so this
        message is not persisted (the record stays RUNNING, as the job does)."""
        assert entry.tracker is not None
        note = f"waiting for a fault to clear, retrying in {delay:.1f} s: {error.message}"
        entry.channel.publish(
            epb.ExportProgress(progress=entry.tracker.set_state(ppb.JOB_STATE_RUNNING, note))
        )

    def running(self, entry: JobEntry, first_start: bool) -> None:
        assert entry.tracker is not None
        self.publish(entry, entry.tracker.set_state(ppb.JOB_STATE_RUNNING))
        self.persist(entry, ppb.JOB_STATE_RUNNING, extra=["started_at"] if first_start else [])

    def succeeded(self, entry: JobEntry, outcome: jpb.ExportOutcome) -> None:
        """Stores the outcome; the resume state is cleared, a finished job never resumes."""
        assert entry.tracker is not None
        result = outcome.result
        entry.checkpoint.Clear()
        progress = entry.tracker.set_state(ppb.JOB_STATE_SUCCEEDED, "export finished")
        record = spb.ExportJob(
            output_uri=result.output_uri,
            output_size_bytes=result.size_bytes,
            feature_count=result.feature_count,
            progress=progress,
            outcome=outcome,
        )
        extra = ["output_uri", "output_size_bytes", "feature_count", "outcome", "finished_at"]
        self._persist_patiently(entry, ppb.JOB_STATE_SUCCEEDED, extra, record)
        shutil.rmtree(entry.staging, ignore_errors=True)
        entry.channel.publish(epb.ExportProgress(progress=progress, result=result))

    def parked(self, entry: JobEntry) -> None:
        """A shutdown stopped the worker: the job stays RUNNING for the next start."""
        try:
            self.persist(entry, ppb.JOB_STATE_RUNNING)
        except MistudioError:
            log.warning("could not persist progress at shutdown", extra={"job_id": entry.job_id})

    def paused(self, entry: JobEntry, stored: spb.ExportJob, note: str) -> None:
        progress = _next_progress(entry, stored, ppb.JOB_STATE_PAUSED, note)
        self.persist(entry, ppb.JOB_STATE_PAUSED, record=spb.ExportJob(progress=progress))
        entry.channel.publish(epb.ExportProgress(progress=progress))

    def cancelled(self, entry: JobEntry, stored: spb.ExportJob) -> None:
        """Removes everything staged; nothing was published, so nothing is left."""
        shutil.rmtree(entry.staging, ignore_errors=True)
        entry.checkpoint.Clear()
        error = status_pb2.Status(code=code_pb2.CANCELLED, message="cancelled by request")
        self._finished(entry, stored, ppb.JOB_STATE_CANCELLED, error, spb.ExportJob())

    def failed(self, entry: JobEntry, stored: spb.ExportJob, error: BaseException) -> None:
        """Records the error with its remediation; checkpoint and staging stay for a resume."""
        if not isinstance(error, MistudioError):
            log.exception("export failed", exc_info=error, extra={"job_id": entry.job_id})
        status = status_from_error(error)
        status.message += " (the job keeps its checkpoint: ResumeExport retries from there)"
        record = spb.ExportJob(error_message=status.message)
        record.error_details.update(json_format.MessageToDict(status))
        self._finished(entry, stored, ppb.JOB_STATE_FAILED, status, record)

    def _finished(
        self,
        entry: JobEntry,
        stored: spb.ExportJob,
        state: ppb.JobState.ValueType,
        error: status_pb2.Status,
        record: spb.ExportJob,
    ) -> None:
        progress = _next_progress(entry, stored, state, error.message, error)
        record.progress.CopyFrom(progress)
        extra = ["finished_at"]
        if record.error_message:
            extra += ["error_message", "error_details"]
        try:
            self._persist_patiently(entry, state, extra, record)
        except MistudioError:
            # The record still says RUNNING: the next start of this service resumes the job.
            log.exception("could not record the job's end", extra={"job_id": entry.job_id})
            return
        entry.channel.publish(epb.ExportProgress(progress=progress))

    def _persist_patiently(
        self,
        entry: JobEntry,
        state: ppb.JobState.ValueType,
        extra: list[str],
        record: spb.ExportJob,
    ) -> None:
        """A state change must reach the store before any watcher sees it: waits out a store
        or database outage (up to the patience) instead of letting the two disagree."""
        call_with_patience(
            lambda: self.persist(entry, state, extra=extra, record=record), self.patience
        )


def _next_progress(
    entry: JobEntry,
    stored: spb.ExportJob,
    state: ppb.JobState.ValueType,
    note: str,
    error: status_pb2.Status | None = None,
) -> ppb.Progress:
    """The job's progress in ``state``: from its tracker, or from the record when none runs."""
    if entry.tracker is not None:
        return entry.tracker.set_state(state, note, error)
    progress = views.progress_of(stored)
    progress.sequence += SEQUENCE_GAP
    progress.state, progress.message = state, note
    if error is not None:
        progress.error.CopyFrom(error)
    return progress
