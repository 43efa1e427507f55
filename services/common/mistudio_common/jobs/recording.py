"""How a job's life reaches its watchers and its store.

State changes are stored first and then published, so a watcher that sees a state can read the
same state back. Progress between checkpoints is stored at most every few seconds; sequence
numbers stay monotonic across restarts because a resumed job's tracker skips ahead by more than
the messages that can go unstored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic

from google.rpc import status_pb2
from mistudio.common.v1 import progress_pb2 as ppb

from mistudio_common import stages
from mistudio_common.errors import MistudioError
from mistudio_common.jobs.control import JobControl
from mistudio_common.jobs.kind import Snapshot, snapshot_of
from mistudio_common.jobs.store import C, JobRecord, JobStore, JobUpdate, O
from mistudio_common.progress import JobChannel, ProgressTracker, StageId

SEQUENCE_GAP = 1000
"""Progress is persisted at least every SEQUENCE_GAP // 10 messages; a resumed job skips this
far ahead so sequence numbers keep increasing even past messages published but never stored."""


@dataclass
class JobEntry(Generic[C, O]):
    """What this process holds for one job it has seen."""

    job_id: str
    channel: JobChannel[Snapshot[O]]
    checkpoint: C
    started: bool
    tracker: ProgressTracker | None = None
    control: JobControl | None = None
    thread: threading.Thread | None = None
    persisted_at: float = 0.0
    unpersisted: int = 0
    unrecorded: JobUpdate[C, O] | None = None
    """An end state watchers have seen that the store has not taken yet."""
    held: bool = False
    """This instance holds the job's lease (renewed while it runs)."""

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class JobRecorder(Generic[C, O]):
    """Writes jobs' progress and state changes to the store and to their watchers."""

    def __init__(self, store: JobStore[C, O], persist_seconds: float) -> None:
        self._store = store
        self._persist_seconds = persist_seconds

    def publish(self, entry: JobEntry[C, O], progress: ppb.Progress) -> None:
        """Sends progress to watchers; stores it every few seconds (or 100 messages), without
        the checkpoint: that changes only at saves and can be large."""
        entry.channel.publish(Snapshot(progress))
        entry.unpersisted += 1
        due = time.monotonic() - entry.persisted_at >= self._persist_seconds
        if due or entry.unpersisted >= SEQUENCE_GAP // 10:
            self.persist(entry, progress.state or ppb.JOB_STATE_RUNNING, checkpoint=False)

    def persist(
        self, entry: JobEntry[C, O], state: ppb.JobState.ValueType, *, checkpoint: bool = True
    ) -> None:
        progress = entry.channel.latest.progress
        self.write(entry, JobUpdate(state, progress, entry.checkpoint if checkpoint else None))

    def write(self, entry: JobEntry[C, O], update: JobUpdate[C, O]) -> None:
        requested = self._store.write(entry.job_id, update)
        entry.persisted_at = time.monotonic()
        entry.unpersisted = 0
        if requested is not None and entry.control is not None:
            entry.control.request(requested)  # asked of this holder by another instance

    def running(self, entry: JobEntry[C, O]) -> None:
        assert entry.tracker is not None
        progress = entry.tracker.set_state(ppb.JOB_STATE_RUNNING)
        entry.channel.publish(Snapshot(progress))
        first = not entry.started
        self.write(
            entry, JobUpdate(ppb.JOB_STATE_RUNNING, progress, entry.checkpoint, started=first)
        )
        entry.started = True

    def waiting(self, entry: JobEntry[C, O], error: MistudioError, delay: float) -> None:
        """Tells watchers why a running job stalls; the store may be what is down, so this
        message is not stored (the record stays RUNNING, as the job does)."""
        assert entry.tracker is not None
        note = f"waiting for a fault to clear, retrying in {delay:.1f} s: {error.message}"
        entry.channel.publish(Snapshot(entry.tracker.set_state(ppb.JOB_STATE_RUNNING, note)))

    def record(
        self,
        entry: JobEntry[C, O],
        record: JobRecord[C, O],
        state: ppb.JobState.ValueType,
        note: str,
    ) -> None:
        """A state change of a job no worker runs: stored first, then published."""
        progress = next_progress(entry, record, state, note)
        self.write(entry, JobUpdate(state, progress, entry.checkpoint))
        entry.channel.publish(Snapshot(progress))


def tracker_for(
    job_id: str, job_stages: Sequence[StageId], stored: ppb.Progress
) -> ProgressTracker:
    first = stored.sequence + SEQUENCE_GAP if stored.sequence else 0
    tracker = stages.tracker(job_id, job_stages, first)
    if stored.stages:
        tracker.restore(stored)
    return tracker


def next_progress(
    entry: JobEntry[C, O],
    record: JobRecord[C, O],
    state: ppb.JobState.ValueType,
    note: str,
    error: status_pb2.Status | None = None,
) -> ppb.Progress:
    """The job's progress in ``state``: from its tracker, or from the record when none runs."""
    if entry.tracker is not None:
        return entry.tracker.set_state(state, note, error)
    progress = snapshot_of(record).progress
    progress.sequence = max(progress.sequence, entry.channel.latest.progress.sequence)
    progress.sequence += SEQUENCE_GAP
    progress.state, progress.message = state, note
    if error is not None:
        progress.error.CopyFrom(error)
    return progress
