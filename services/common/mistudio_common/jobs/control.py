"""The one way a running job is stopped: pause, cancel, service shutdown or a lost lease.

A stop is a request; the job honours it at its next stage or batch boundary (``check``), so it
always stops in a resumable state. Blocking waits register a callback that cuts them short, and
batch loops that only poll may treat the control as an event (``is_set``).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StopReason(enum.Enum):
    PAUSE = "pause"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"
    """The service stops; the job stays unfinished and resumes when it starts again."""
    LEASE_LOST = "lease lost"
    """Another instance has taken the job over; this one must stop without writing."""


class JobStopped(Exception):
    """Raised at a boundary when the job was asked to stop."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(f"job stopped: {reason.value}")
        self.reason = reason


class JobControl:
    """Stop requests for one job, and the callbacks that cut a blocking wait short."""

    def __init__(self, shutdown: threading.Event | None = None) -> None:
        self._shutdown = shutdown or threading.Event()
        self._reason: StopReason | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._woken = threading.Event()

    @property
    def reason(self) -> StopReason | None:
        with self._lock:
            if self._reason is None and self._shutdown.is_set():
                return StopReason.SHUTDOWN
            return self._reason

    def is_set(self) -> bool:
        """Whether a stop is pending (batch loops poll this like an Event)."""
        return self.reason is not None

    def request(self, reason: StopReason) -> None:
        """Asks the job to stop at its next boundary; a cancel overrides a pause."""
        with self._lock:
            if self._reason not in (StopReason.CANCEL, StopReason.LEASE_LOST):
                self._reason = reason
        self.wake()

    def wake(self) -> None:
        """Runs the interrupt callbacks (also used when the whole service shuts down)."""
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
            raise JobStopped(reason)

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
