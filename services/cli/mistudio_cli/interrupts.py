"""Ctrl-C while a gRPC stream is followed, heard without raising inside gRPC's own locking."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Protocol, TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.1
"""How often the waiting thread looks for a Ctrl-C heard meanwhile."""


class Cancellable(Protocol):
    def cancel(self) -> bool: ...


def follow_until_interrupted(stream: Cancellable, consume: Callable[[], T]) -> T:
    """``consume()`` (which reads ``stream``) run in a thread of its own while this one waits for
    it; a Ctrl-C (SIGINT) meanwhile cancels the stream and raises KeyboardInterrupt here.

    Python raises KeyboardInterrupt between any two bytecodes of the main thread. Raised inside
    gRPC's wait for the stream's next message, after its ``Condition.wait`` let go of the lock
    and before the ``try`` that takes it back, it left the lock released, and leaving gRPC's
    ``with`` block then raised "RuntimeError: cannot release un-acquired lock" instead. Here
    SIGINT only sets a flag, which this thread reads between its waits; gRPC never runs in it."""
    if threading.current_thread() is not threading.main_thread():
        return consume()  # only the main thread hears signals
    heard: list[int] = []

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        heard.append(signum)  # no lock, no exception: it may run inside any wait of this thread

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="stream") as reader:
            consumed = reader.submit(consume)
            while not heard:
                try:
                    return consumed.result(timeout=POLL_SECONDS)
                except TimeoutError:
                    continue
            stream.cancel()  # ends the reader's wait: the pool's exit joins it
    finally:
        signal.signal(signal.SIGINT, previous)
    raise KeyboardInterrupt
