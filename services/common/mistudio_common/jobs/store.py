"""Where a job engine keeps its jobs: a small protocol each service adapts to its storage.

The compute service keeps records on its own disk; the export service keeps them in the store
service. The engine reads a :class:`JobRecord`, writes :class:`JobUpdate`\\ s and, where several
instances share one storage, holds a lease on each job it runs (``claim``), so a second instance
adopts a job only once the first has stopped renewing it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from google.protobuf.message import Message
from google.rpc import status_pb2
from mistudio.common.v1 import progress_pb2 as ppb

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

    def write(self, job_id: str, update: JobUpdate[C, O]) -> None:
        """Stores ``update``; Unavailable while the storage is out of reach."""
        ...

    def unfinished(self) -> Iterable[JobRecord[C, O]]:
        """Jobs that were queued or running when their service stopped: recovery resumes them."""
        ...

    def claim(self, job_id: str, holder: str, lease_seconds: float) -> bool:
        """Takes (or renews) the job's lease for ``holder`` unless another holder's lease is
        still live; atomic. ``lease_seconds`` 0 gives a held lease back."""
        ...
