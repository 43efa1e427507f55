"""What a running job sees of its engine: progress reporting, checkpoints and stop requests.

A job reports progress and saves its typed checkpoint through a :class:`RunningJob`; each save
is persisted and is also the point where a pause, a cancel or a shutdown takes effect (as
:class:`~mistudio_common.jobs.control.JobStopped`), so a job always stops in a resumable state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message
from mistudio.common.v1 import progress_pb2 as ppb

from mistudio_common.jobs.control import JobControl
from mistudio_common.progress import ProgressTracker, StageId

C = TypeVar("C", bound=Message)


@dataclass
class RunningJob(Generic[C]):
    """The running job as its work sees it."""

    job_id: str
    checkpoint: C
    """Resume state; a stage updates its own part, then calls :meth:`save`."""
    tracker: ProgressTracker
    control: JobControl
    publish: Callable[[ppb.Progress], None]
    persist: Callable[[], None]

    def report(
        self, stage: StageId, done: int, total: int, unit: str = "", message: str = ""
    ) -> None:
        self.publish(self.tracker.update(stage, done, total, unit, message))

    def finish_stage(self, stage: StageId) -> None:
        self.publish(self.tracker.finish_stage(stage))

    def save(self) -> None:
        """Persists the resume state with the progress, then honours stop requests."""
        self.persist()
        self.control.check()

    def check(self) -> None:
        self.control.check()
