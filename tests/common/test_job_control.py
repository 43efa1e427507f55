"""The one stop mechanism: a request takes effect at the job's next boundary."""

from __future__ import annotations

import threading

import pytest
from mistudio_common.jobs.control import JobControl, JobStopped, StopReason


def test_a_job_runs_on_until_a_stop_is_requested() -> None:
    control = JobControl()
    control.check()
    assert not control.is_set()
    control.request(StopReason.PAUSE)
    assert control.is_set()
    with pytest.raises(JobStopped) as stopped:
        control.check()
    assert stopped.value.reason is StopReason.PAUSE


def test_a_cancel_overrides_a_pause_but_not_the_other_way_round() -> None:
    control = JobControl()
    control.request(StopReason.PAUSE)
    control.request(StopReason.CANCEL)
    control.request(StopReason.PAUSE)
    assert control.reason is StopReason.CANCEL


def test_a_service_shutdown_stops_every_job_that_was_not_asked_otherwise() -> None:
    shutdown = threading.Event()
    idle, cancelled = JobControl(shutdown), JobControl(shutdown)
    cancelled.request(StopReason.CANCEL)
    shutdown.set()
    assert idle.reason is StopReason.SHUTDOWN
    assert cancelled.reason is StopReason.CANCEL


def test_a_stop_cuts_a_blocking_wait_short() -> None:
    control = JobControl()
    woken: list[bool] = []
    with control.on_interrupt(lambda: woken.append(True)):
        control.request(StopReason.CANCEL)
    assert woken == [True]
    assert control.sleep(3600.0)  # returns at once: a stop is pending
