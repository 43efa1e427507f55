"""The export's warm worker processes: started at the first stage that needs them, kept for the
next one, let go when idle, and ended with a stage that stops."""

from __future__ import annotations

import os
import signal
import time
from multiprocessing.context import SpawnProcess

import psutil
import pytest
from mistudio_export.worker_pool import WorkerPool


class Stopped(Exception):
    """What a cancelled job's check raises in the middle of a stage."""


def _pids(pool: WorkerPool) -> set[int]:
    with pool.lease() as lease:
        futures = [lease.submit(os.getpid) for _ in range(pool.workers)]
        return {f.result() for f in futures}


_kept: list[bytes] = []
"""In a worker: what a task left behind, scattered through the heap."""


def _fragment_the_heap() -> None:
    """Takes 200 MB in 1 KB blocks and frees all but every 64th: the heap cannot shrink from its
    top, only the free pages between what is kept can go back."""
    blocks = [bytes(1024) for _ in range(200_000)]
    _kept.extend(blocks[::64])


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _gone(pids: set[int], within_seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + within_seconds
    while any(psutil.pid_exists(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_next_stage_runs_in_the_processes_the_last_one_started() -> None:
    pool = WorkerPool(1)
    try:
        assert _pids(pool) == _pids(pool)
    finally:
        pool.shutdown()


def test_a_stage_that_stops_ends_its_running_work_and_the_next_starts_new_processes() -> None:
    pool = WorkerPool(1)
    try:
        with pytest.raises(Stopped), pool.lease() as lease:
            pid = lease.submit(os.getpid).result()
            lease.submit(time.sleep, 600)
            raise Stopped
        assert _gone({pid}, within_seconds=0)  # ended before the stage's error left the lease
        assert _pids(pool).isdisjoint({pid})
    finally:
        pool.shutdown()


def test_processes_without_work_for_the_idle_time_are_let_go() -> None:
    pool = WorkerPool(1, idle_seconds=0.2)
    pids = _pids(pool)
    assert _gone(pids)


def test_two_stages_at_once_get_processes_of_their_own_and_one_set_is_kept() -> None:
    pool = WorkerPool(1)
    try:
        with pool.lease() as first, pool.lease() as second:
            one = first.submit(os.getpid).result()
            two = second.submit(os.getpid).result()
        assert one != two
        assert _gone({one})  # given back last: the second stage's were kept already
        assert _pids(pool) == {two}
    finally:
        pool.shutdown()


def test_shutting_the_service_down_ends_the_idle_processes() -> None:
    pool = WorkerPool(1)
    pids = _pids(pool)
    pool.shutdown()
    assert _gone(pids)


def test_a_kept_process_gives_back_what_its_task_freed() -> None:
    """Measured on the 4,096-feature bench: a writer's process held 200 MB after its range, and
    the processes kept for validation raised its memory (all processes counted) by 320 MB."""
    pool = WorkerPool(1)
    try:
        with pool.lease() as lease:
            before = lease.submit(_rss).result()
            lease.submit(_fragment_the_heap).result()
            after = lease.submit(_rss).result()
        assert after - before < 50 * 2**20
    finally:
        pool.shutdown()


def test_processes_that_died_while_idle_are_replaced_at_the_next_stage() -> None:
    pool = WorkerPool(1)
    try:
        pids = _pids(pool)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        assert _gone(pids)
        assert _pids(pool).isdisjoint(pids)
    finally:
        pool.shutdown()


def test_a_warmed_pool_runs_the_next_stage_in_the_processes_it_started(
    spawned: list[SpawnProcess],
) -> None:
    """Warmed while the dashboards are staged, the file stage finds its processes started."""
    started = spawned
    pool = WorkerPool(2)
    try:
        pool.warm()
        assert len(started) == 2
        pool.warm()  # already warm: nothing more started
        ran_in = _pids(pool)  # one process may take both tasks: a subset, none new
        assert ran_in <= {p.pid for p in started}
        assert len(started) == 2
    finally:
        pool.shutdown()
