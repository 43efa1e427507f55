"""Watchers of a job that another instance runs: they follow its stored record.

Only the instance that holds a job publishes its progress as it happens; elsewhere a watched,
unfinished job's channel is brought up to date from the record by one thread for all such jobs,
one read per job per interval, so a watcher holds no thread and the store's load does not grow
with the number of watchers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic

from google.rpc import code_pb2, status_pb2
from mistudio.common.v1 import progress_pb2 as ppb

from mistudio_common.errors import MistudioError, NotFound
from mistudio_common.jobs.kind import Snapshot, snapshot_of
from mistudio_common.jobs.recording import JobEntry
from mistudio_common.jobs.store import C, JobStore, O

log = logging.getLogger(__name__)


def runs_elsewhere(entry: JobEntry[C, O]) -> bool:
    """A watched, unfinished job that this instance neither runs nor holds."""
    idle = not (entry.running or entry.held or entry.unrecorded is not None)
    return idle and entry.channel.watched and not entry.channel.latest.final


class Follower(Generic[C, O]):
    """The thread that reads the records of the jobs ``followed`` names, every ``seconds``."""

    def __init__(
        self,
        store: JobStore[C, O],
        followed: Callable[[], list[JobEntry[C, O]]],
        seconds: float,
        stop: threading.Event,
    ) -> None:
        self._store, self._followed, self._seconds, self._stop = store, followed, seconds, stop
        self._thread = threading.Thread(target=self._run, name="job-follow", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.wait(self._seconds):
            for entry in self._followed():
                try:
                    self.catch_up(entry)
                except MistudioError as error:  # the next interval reads it again
                    log.warning("could not follow a job: %s", error, extra={"job_id": entry.job_id})

    def catch_up(self, entry: JobEntry[C, O]) -> None:
        """Publishes the stored snapshot when it is newer than the channel's."""
        latest = entry.channel.latest.progress
        try:
            snapshot = snapshot_of(self._store.load(entry.job_id))
        except NotFound:  # deleted (and so stopped) by another instance
            error = status_pb2.Status(code=code_pb2.NOT_FOUND, message="the job was deleted")
            progress = ppb.Progress(job_id=entry.job_id, state=ppb.JOB_STATE_CANCELLED)
            progress.sequence, progress.message = latest.sequence + 1, error.message
            progress.error.CopyFrom(error)
            entry.channel.publish(Snapshot(progress))
            return
        publish_if_newer(entry, snapshot)


def publish_if_newer(entry: JobEntry[C, O], snapshot: Snapshot[O]) -> None:
    """Publishes a stored snapshot that is ahead of what the channel holds."""
    latest, stored = entry.channel.latest.progress, snapshot.progress
    if stored.sequence > latest.sequence or stored.state != latest.state:
        entry.channel.publish(snapshot)
