"""A few worker threads for the work after the pass, one torch thread each, results in order.

Torch and numpy release the GIL inside their ops, so two threads keep two cores busy where the
per-feature Python between the ops would leave one idle. One torch thread per worker: many small
ops cost more CPU on two intra-op threads than on one, and two workers would share them anyway.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice, pairwise
from typing import TypeVar

import torch

_T = TypeVar("_T")
_R = TypeVar("_R")


def one_torch_thread() -> None:
    """A worker's torch ops run on its own thread only (its OpenMP and MKL thread counts are per
    thread)."""
    torch.set_num_threads(1)


def default_threads(device: torch.device) -> int:
    """Every core torch uses on a CPU; one on an accelerator, whose kernels do the work."""
    return torch.get_num_threads() if device.type == "cpu" else 1


def even_ranges(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) in at most ``parts`` contiguous, non-empty, near-equal ranges (none if empty)."""
    if hi <= lo:
        return []
    parts = max(1, min(parts, hi - lo))
    return list(pairwise(lo + (hi - lo) * k // parts for k in range(parts + 1)))


def in_order(
    fn: Callable[[_T], _R], items: Iterable[_T], threads: int
) -> Generator[_R, None, None]:
    """``fn`` of each item, yielded in the items' order, with at most ``threads`` calls under way
    or done and not yet taken (here, one at a time, without threads). Closing the iterator waits
    for the calls under way and drops those not started."""
    if threads <= 1:
        yield from map(fn, items)
        return
    before = torch.get_num_threads()  # the workers' setting may reach the caller's thread
    pool = ThreadPoolExecutor(threads, "finalise", initializer=one_torch_thread)
    try:
        rest = iter(items)
        pending: deque[Future[_R]] = deque(pool.submit(fn, item) for item in islice(rest, threads))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(fn, item) for item in islice(rest, 1))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(before)
