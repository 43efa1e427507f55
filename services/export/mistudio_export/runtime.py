"""What a running export sees of its job: progress reporting, checkpoints and interruptions.

The pipeline reports progress and saves checkpoints through a :class:`JobRuntime`; each
checkpoint is persisted in the store and is also the point where a pause, a cancel or a service
shutdown takes effect (as :class:`JobInterrupted`), so a job always stops in a resumable state.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio_common.progress import ProgressTracker, StageId

from mistudio_export.plan import ExportPlan


class Interruption(enum.Enum):
    PAUSE = "pause"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"


class JobInterrupted(Exception):
    """Raised at a checkpoint when the job was asked to stop."""

    def __init__(self, reason: Interruption) -> None:
        super().__init__(f"job interrupted: {reason.value}")
        self.reason = reason


class JobControl:
    """Stop requests for one job, and the callbacks that cut a blocking wait short."""

    def __init__(self, shutdown: threading.Event) -> None:
        self._shutdown = shutdown
        self._reason: Interruption | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._woken = threading.Event()

    @property
    def reason(self) -> Interruption | None:
        if self._shutdown.is_set():
            return Interruption.SHUTDOWN
        return self._reason

    def request(self, reason: Interruption) -> None:
        """Asks the job to stop at its next checkpoint; a cancel overrides a pause."""
        with self._lock:
            if self._reason is not Interruption.CANCEL:
                self._reason = reason
            callbacks = list(self._callbacks)
        self._woken.set()
        for callback in callbacks:
            callback()

    def wake(self) -> None:
        """Runs the interrupt callbacks (used when the whole service shuts down)."""
        self._woken.set()
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def sleep(self, seconds: float) -> bool:
        """Waits ``seconds`` unless a stop is requested first; True when one was."""
        self._woken.wait(seconds)
        return self.reason is not None

    def check(self) -> None:
        reason = self.reason
        if reason is not None:
            raise JobInterrupted(reason)

    @contextmanager
    def on_interrupt(self, callback: Callable[[], None]) -> Iterator[None]:
        """Calls ``callback`` if a stop is requested while the block runs (or was already)."""
        with self._lock:
            self._callbacks.append(callback)
        try:
            if self.reason is not None:
                callback()
            yield
        finally:
            with self._lock:
                self._callbacks.remove(callback)


@dataclass
class JobRuntime:
    """The running job as the pipeline sees it."""

    job_id: str
    plan: ExportPlan
    staging: Path
    """Private folder under data_dir/export/<job_id>; nobody else reads it."""
    checkpoint: jpb.ExportCheckpoint
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
