"""The export service's one warm pool of worker processes, for its CPU-bound stages (writing the
Neuronpedia formats, validating them).

A spawned worker imports the export's modules before its first task: 0.34 CPU-s each (measured
on the 2-core bench machine), paid by every process of every stage while the pools were made per
stage. The pool here starts its processes at the first use and keeps them for the next stage and
the next export; they are let go after ``IDLE_SECONDS`` without work, so a service at rest does not
hold their memory, and each gives back what its task freed when the task ends (``_run``). Spawn,
not fork: the service runs gRPC threads, which fork would copy mid-call.

A stage takes the pool with :meth:`WorkerPool.lease`; two jobs leasing at once get a pool each
(the second one made for it), so neither waits for the other and stopping one (its lease ending
in an exception) ends only its own processes. Workers send the lease holder messages (a writer's
count of features written) with :func:`send`.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.queues import SimpleQueue
from typing import Any, TypeVar

from mistudio_common.gc_pause import skip_final_collection

T = TypeVar("T")

IDLE_SECONDS = 120.0
"""How long the processes wait for the next stage: past an export's stages between the file
stage and validation, well short of a service left at rest."""


@dataclass
class Lease:
    """A pool's processes, for one stage; what they :func:`send` comes out of ``messages``."""

    executor: ProcessPoolExecutor
    messages: SimpleQueue[Any]
    _timer: threading.Timer | None = field(default=None, repr=False)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Runs ``fn(*args)`` in one of the processes (``fn`` importable by name there)."""
        return self.executor.submit(_run, fn, *args)

    def terminate(self) -> None:
        """Ends the processes at once, the running tasks with them (the executor itself would
        run every queued task first); this pool is not used again."""
        for process in list(self.executor._processes.values()):
            process.terminate()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _drain(self) -> None:
        """Drops what the stage left unread, so the next lease hears only its own workers."""
        while not self.messages.empty():
            self.messages.get()


class WorkerPool:
    """Up to ``workers`` processes (default: one per core), started when first leased."""

    def __init__(self, workers: int | None = None, idle_seconds: float = IDLE_SECONDS) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: Lease | None = None
        self._closed = False

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        """The warm processes, or new ones when none are free. A stage that ends in an exception
        (a worker's error, a stop request, a process that died) ends the processes with it; the
        next lease starts new ones."""
        lease = self._take()
        try:
            yield lease
        except BaseException:
            lease.terminate()
            raise
        self._give_back(lease)

    def warm(self) -> None:
        """Starts the processes now when none are idle, so that their spawn and imports run
        beside the caller's serial work (the staging of the dashboards) rather than after it,
        at the first task of the stage that leases them."""
        with self._lock:
            if self._idle is not None or self._closed:
                return
        lease = _start(self.workers)
        for _ in range(self.workers):
            lease.executor.submit(int)  # the executor spawns a process per task none is idle for
        self._give_back(lease)

    def shutdown(self) -> None:
        """Ends the idle processes (they exit on their own time); a lease still held ends its
        processes when its stage ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, None
        if idle is not None:
            _close(idle)

    def _take(self) -> Lease:
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is None:
            return _start(self.workers)
        if idle.executor._broken:  # a process died while idle (killed, out of memory)
            _close(idle)
            return _start(self.workers)
        if idle._timer is not None:
            idle._timer.cancel()
        return idle

    def _give_back(self, lease: Lease) -> None:
        lease._drain()
        with self._lock:
            keep = self._idle is None and not self._closed
            if keep:
                lease._timer = threading.Timer(self._idle_seconds, self._release, (lease,))
                lease._timer.daemon = True
                lease._timer.start()
                self._idle = lease
        if not keep:
            _close(lease)

    def _release(self, lease: Lease) -> None:
        with self._lock:
            if self._idle is not lease:
                return  # leased again since
            self._idle = None
        _close(lease)


def _start(workers: int) -> Lease:
    context = multiprocessing.get_context("spawn")
    messages: SimpleQueue[Any] = context.SimpleQueue()
    executor = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_serve, initargs=(messages,)
    )
    return Lease(executor, messages)


def _close(lease: Lease) -> None:
    """Asks the idle processes to exit without waiting for them (0.25-0.37 s measured): a
    stopping service stops its peers meanwhile, and the interpreter's exit joins them."""
    if lease._timer is not None:
        lease._timer.cancel()
    lease.executor.shutdown(wait=False)
    lease.messages.close()


_messages: SimpleQueue[Any] | None = None
"""In a worker: where :func:`send` puts what the lease holder reads."""


def _serve(messages: SimpleQueue[Any]) -> None:
    global _messages
    _messages = messages
    skip_final_collection()  # the service's own exit waits for its workers' exits


def send(message: Any) -> None:
    """In a worker: hands ``message`` (picklable) to the stage that leased the pool; it is in
    the pipe when this returns, so before the result of the task that sent it."""
    assert _messages is not None, "called in a worker of a WorkerPool"
    _messages.put(message)


def _run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, then the memory its objects held goes back to the system before the
    process waits for its next task: measured on the 4,096-feature bench, a writer's process
    held 200 MB after its range, 90 MB after this (0.03 CPU-s); without it the processes kept
    for validation raised the stage's memory, all processes counted, from 851 to 1172 MB."""
    try:
        return fn(*args)
    finally:
        gc.collect()  # the writers leave cycles (they run with the collector paused)
        _malloc_trim(0)


_malloc_trim: Callable[[int], int] = getattr(ctypes.CDLL(None), "malloc_trim", lambda _pad: 0)
"""glibc's: returns the heap's free pages to the system; elsewhere (no such call) a no-op."""
