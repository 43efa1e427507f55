"""What a service declares about its jobs for the engine: the work (stages and how to run
them), the kind (how to prepare a stored job again and what to free at its end), what watchers
receive, and the leases of instances that share one store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from google.protobuf.message import Message
from mistudio.common.v1 import progress_pb2 as ppb

from mistudio_common import stages
from mistudio_common.jobs.running import RunningJob
from mistudio_common.jobs.store import C, JobRecord, Leases, O
from mistudio_common.progress import TERMINAL_STATES, StageId


@dataclass(frozen=True)
class Snapshot(Generic[O]):
    """What a watcher receives: the progress and, once the job succeeded, its outcome."""

    progress: ppb.Progress
    outcome: O | None = None

    @property
    def final(self) -> bool:
        return self.progress.state in TERMINAL_STATES


def is_final(snapshot: Snapshot[O]) -> bool:
    return snapshot.final


_CheckpointIn = TypeVar("_CheckpointIn", bound=Message)
_OutcomeOut = TypeVar("_OutcomeOut", bound=Message, covariant=True)


class Work(Protocol[_CheckpointIn, _OutcomeOut]):
    """One job's work, prepared: its declared stages and how to run them."""

    @property
    def stages(self) -> Sequence[StageId]: ...

    def run(self, job: RunningJob[_CheckpointIn]) -> _OutcomeOut:
        """Runs the stages not done yet by the checkpoint; raises JobStopped at a boundary when
        asked to stop and a MistudioError (transient or not) when it cannot go on."""
        ...


class JobKind(Protocol[C, O]):
    """What a service tells the engine about its jobs."""

    failure_note: str
    """Appended to a failure's message: how the job can go on, if it can."""

    def prepare(self, record: JobRecord[C, O]) -> Work[C, O]:
        """Plans a stored job again (after a restart or a resume); a MistudioError fails it."""
        ...

    def ended(self, job_id: str, state: ppb.JobState.ValueType, checkpoint: C) -> None:
        """Frees what the job held once it reached ``state`` (staging, checkpoint files):
        called after the end state is stored and its watchers told, so nothing a result or a
        resume needs may be freed here."""
        ...

    def expire(self, job_id: str) -> None:
        """Removes a finished job past its retention: its record and everything it left."""
        ...


class Leftovers(Protocol):
    """What jobs that crashed, were cancelled or are gone leave outside their records."""

    def remove(self, now: float | None = None) -> None:
        """Removes every leftover older than its configured time at ``now`` (epoch seconds;
        default: the present), in each pass of retention."""
        ...


@dataclass(frozen=True)
class Retention:
    """How long finished jobs are kept (None: until deleted), how often the engine looks for
    older ones, and what else each pass removes."""

    seconds: float | None
    every: float = 600.0
    leftovers: Leftovers | None = None


@dataclass(frozen=True)
class Leasing:
    """Leases for instances that share one store (none: the store is this process's own)."""

    holder: str
    """This instance's id."""
    leases: Leases
    seconds: float = 30.0
    """A lease lasts this long unless renewed; a crashed holder's jobs are adopted after it."""

    @property
    def renew_every(self) -> float:
        return self.seconds / 3


def snapshot_of(record: JobRecord[C, O]) -> Snapshot[O]:
    progress = ppb.Progress()
    progress.CopyFrom(record.progress)
    progress.job_id, progress.state = record.job_id, record.state
    outcome = record.outcome if record.state == ppb.JOB_STATE_SUCCEEDED else None
    return Snapshot(progress, outcome)


def first_progress(job_id: str, job_stages: Sequence[StageId]) -> ppb.Progress:
    """A new job's QUEUED snapshot, to store with its record."""
    return stages.tracker(job_id, job_stages).snapshot()
