"""The export's warm worker processes: started at the first stage that needs them, kept for the
next one, let go when idle, and ended with a stage that stops."""

from __future__ import annotations

import os
import time

import psutil
import pytest
from mistudio_export.worker_pool import WorkerPool


class Stopped(Exception):
    """What a cancelled job's check raises in the middle of a stage."""


def _pids(pool: WorkerPool) -> set[int]:
    with pool.lease() as lease:
        futures = [lease.executor.submit(os.getpid) for _ in range(pool.workers)]
        return {f.result() for f in futures}


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
            pid = lease.executor.submit(os.getpid).result()
            lease.executor.submit(time.sleep, 600)
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
            one = first.executor.submit(os.getpid).result()
            two = second.executor.submit(os.getpid).result()
        assert one != two
        assert _gone({one})  # given back last: the second stage's were kept already
        assert _pids(pool) == {two}
    finally:
        pool.shutdown()


def test_shutting_the_service_down_ends_the_idle_processes() -> None:
    pool = WorkerPool(1)
    pids = _pids(pool)
    pool.shutdown()
    assert _gone(pids, within_seconds=0)
