"""Transient faults are waited out with backoff, up to the patience; others fail at once."""

from __future__ import annotations

import pytest
from mistudio_common.errors import Internal, InvalidArgument, Unavailable
from mistudio_common.retry import Patience, call_with_patience, is_transient


def test_backoff_doubles_up_to_its_cap_and_stops_at_the_patience() -> None:
    delays = list(Patience(seconds=10.0, first_delay=1.0, max_delay=4.0).delays())
    assert delays == [1.0, 2.0, 4.0, 3.0]


def test_a_transient_fault_is_retried_until_the_call_succeeds() -> None:
    answers: list[BaseException | str] = [Unavailable("down"), Unavailable("down"), "ok"]
    slept: list[float] = []

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert call_with_patience(call, Patience(seconds=5.0), slept.append) == "ok"
    assert slept == [0.25, 0.5]


def test_the_last_fault_is_raised_once_patience_runs_out() -> None:
    def call() -> None:
        raise Unavailable("still down")

    with pytest.raises(Unavailable, match="still down"):
        call_with_patience(call, Patience(seconds=1.0), lambda _: None)


def test_permanent_errors_are_not_retried() -> None:
    calls = []

    def call() -> None:
        calls.append(1)
        raise Internal("peer failed with code 13")

    with pytest.raises(Internal):
        call_with_patience(call, Patience(seconds=5.0), lambda _: None)
    assert calls == [1]
    assert not is_transient(InvalidArgument("bad", field="x"))
