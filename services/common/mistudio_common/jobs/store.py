"""Where a job engine keeps its jobs: a small protocol each service adapts to its storage.

The compute service keeps records on its own disk; the export service keeps them in the store
service. The engine reads a :class:`JobRecord` and writes :class:`JobUpdate`\\ s. Where several
instances share one storage (:class:`Leases`), each holds a lease on the jobs it runs, so a second
instance adopts a job only once the first has stopped renewing it, and a pause or cancel asked of
an instance that does not hold the job is recorded for the holder to carry out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from google.protobuf.message import Message
from google.rpc import status_pb2
from mistudio.common.v1 import progress_pb2 as ppb

from mistudio_common.jobs.control import StopReason

C = TypeVar("C", bound=Message)
"""The job kind's typed checkpoint message."""
O = TypeVar("O", bound=Message)  # noqa: E741 - the outcome type, named like C
"""The job kind's typed outcome message."""


@dataclass(frozen=True)
class JobRecord(Generic[C, O]):
    """A job as stored: enough to show it and to resume it."""

    job_id: str
    state: ppb.JobState.ValueType
    progress: ppb.Progress
    checkpoint: C
    outcome: O | None = None
    started: bool = False
    """Whether it ever ran (the first run records its start time)."""
    requested: StopReason | None = None
    """A pause or cancel asked of the job's holder that it has not carried out yet."""


@dataclass(frozen=True)
class JobUpdate(Generic[C, O]):
    """One write of a job's record; what is None is left as stored."""

    state: ppb.JobState.ValueType
    progress: ppb.Progress
    checkpoint: C | None = None
    """Written at checkpoints and at the end, never with plain progress (it can be large)."""
    outcome: O | None = None
    error: status_pb2.Status | None = None
    started: bool = False
    """The job's first run begins now."""
    finished: bool = False
    """The job reaches its end state now."""


class JobStore(Protocol[C, O]):
    def load(self, job_id: str) -> JobRecord[C, O]:
        """The stored job; NotFound when there is none."""
        ...

    def write(self, job_id: str, update: JobUpdate[C, O]) -> StopReason | None:
        """Stores ``update``; Unavailable while the storage is out of reach. Returns the stop
        another instance asked of the job's holder where the storage's reply carries it (so
        the holder sees it with its progress, not only at its next lease renewal), else None."""
        ...

    def unfinished(self) -> Iterable[JobRecord[C, O]]:
        """Jobs that were queued or running when their service stopped: recovery resumes them."""
        ...

    def ended_before(self, cutoff: float) -> Iterable[str]:
        """Ids of jobs that reached an end state before ``cutoff`` (seconds since the epoch):
        retention removes them."""
        ...


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: whether the lease is held, and what was asked of its holder."""

    held: bool
    requested: StopReason | None = None


class Leases(Protocol):
    """Leases and stop requests on jobs in a storage that several instances share."""

    def claim(self, job_id: str, holder: str, lease_seconds: float) -> Claim:
        """Takes (or renews) the job's lease for ``holder`` unless another holder's lease is
        still live; atomic. ``lease_seconds`` 0 gives a held lease back."""
        ...

    def request(self, job_id: str, reason: StopReason) -> None:
        """Records a pause or cancel for the job's holder (a cancel overrides a pause);
        FailedPrecondition when the job is no longer queued or running."""
        ...
