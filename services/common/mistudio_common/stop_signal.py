"""The main thread's wait for a stop: a signal, heard whichever thread the kernel delivers it to,
or a wake-up from another thread.

A Python signal handler runs only in the main thread, between two of its bytecodes. A main
thread blocked in a system call returns to run it only when the kernel delivered the signal to
that very thread; in a process with gRPC's threads it may go to any of them, and then the main
thread slept on (seen: a store child ignored its SIGTERM once in a few hundred starts on a
loaded machine, until killed). ``signal.set_wakeup_fd`` has the interpreter's C-level handler
write the signal's number to a pipe from whichever thread it ran in; the main thread reads it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable
from types import FrameType

WOKEN = b"w"
"""What :meth:`StopWait.wake` writes: no signal's number is this byte (115)."""


class StopWait:
    """Make one in the main thread before the signals may come; :meth:`wait` there."""

    def __init__(self, signals: Iterable[signal.Signals]) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("only the main thread can wait for signals")
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._write_end, False)  # set_wakeup_fd requires it
        for signum in signals:
            signal.signal(signum, _heard)  # replaces the default action; the pipe reports it
        signal.set_wakeup_fd(self._write_end, warn_on_full_buffer=False)

    def wake(self) -> None:
        """Ends the wait from any thread."""
        os.write(self._write_end, WOKEN)

    def wait(self) -> signal.Signals | None:
        """Blocks until a signal or :meth:`wake`; the signal, or None when woken."""
        heard = os.read(self._read_end, 1)
        return None if heard == WOKEN else signal.Signals(heard[0])


def _heard(signum: int, frame: FrameType | None) -> None:
    """Nothing to do: the wake-up byte already ended the wait."""
