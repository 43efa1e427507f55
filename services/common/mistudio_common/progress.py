"""Progress of long-running jobs: one shared shape, tracked outside RPC handlers.

A job's worker reports (stage, items done, items total) to a :class:`ProgressTracker`, which
keeps per-stage timings and turns them into ``mistudio.common.v1.Progress`` snapshots with a
monotonic sequence number. A :class:`JobChannel` fans snapshots out to any number of watchers;
a watcher that disconnects never affects the job, and a new one first gets the latest snapshot.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeAlias, TypeVar

from google.rpc import status_pb2
from mistudio.common.v1 import progress_pb2 as pb

StageId: TypeAlias = pb.Stage.ValueType
JobStateId: TypeAlias = pb.JobState.ValueType

TERMINAL_STATES = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})
_OWN_RATE_FROM = 0.05
"""A stage's own rate predicts its remaining time once this much of it is done, or once it has
counted items since its first counted one (a rate with its start-up left out)."""


@dataclass
class _StageClock:
    stage: StageId
    state: JobStateId = pb.JOB_STATE_QUEUED
    done: int = 0
    total: int = 0
    unit: str = ""
    started: float | None = None
    finished: float | None = None
    elapsed_before: float = 0.0
    """Seconds spent in this stage before a restart (restored from a checkpoint)."""
    phase_from: float = 0.0
    """The stage's elapsed seconds when its count last started over (a new total, or fewer
    done: a stage that counts two kinds of items in turn); its own rate is measured since."""
    counted_from: tuple[float, int] | None = None
    """(elapsed seconds, items done) at the phase's first update with items done: its rate is
    measured from there, leaving out the start-up before the first item (loading a model,
    starting a process), which would otherwise stretch the whole stage's ETA."""


@dataclass
class ProgressTracker:
    """Tracks one job's stages; ``snapshot()`` renders the current Progress message."""

    job_id: str
    stages: Sequence[StageId]
    stage_weights: Sequence[float] | None = None
    first_sequence: int = 0
    clock: Callable[[], float] = time.monotonic
    _clocks: list[_StageClock] = field(init=False)
    _current: int = field(init=False, default=0)
    _sequence: int = field(init=False)
    _state: JobStateId = field(init=False, default=pb.JOB_STATE_QUEUED)
    _message: str = field(init=False, default="")
    _error: status_pb2.Status | None = field(init=False, default=None)
    _fraction_shown: float = field(init=False, default=0.0)
    """The largest overall fraction reported so far: a stage whose count starts over (reading,
    then writing) or new weights never move a job's progress backwards."""
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._clocks = [_StageClock(stage=s) for s in self.stages]
        self._sequence = self.first_sequence
        weights = self.stage_weights or [1.0] * len(self.stages)
        total = sum(weights) or 1.0
        self._weights = [w / total for w in weights]

    def weigh(self, stage_weights: Sequence[float]) -> None:
        """Replaces the stages' weights, e.g. the prior shares by a job's predicted seconds."""
        if len(stage_weights) != len(self.stages):
            raise ValueError(f"{len(stage_weights)} weights for {len(self.stages)} stages")
        total = sum(stage_weights) or 1.0
        with self._lock:
            self._weights = [w / total for w in stage_weights]

    def restore(self, snapshot: pb.Progress) -> None:
        """Continues a job after a restart: sequence numbers and finished stages carry over."""
        with self._lock:
            self._sequence = max(self._sequence, snapshot.sequence)
            self._fraction_shown = max(self._fraction_shown, snapshot.fraction)
            by_stage = {s.stage: s for s in snapshot.stages}
            for clock in self._clocks:
                previous = by_stage.get(clock.stage)
                if previous is None:
                    continue
                clock.elapsed_before = previous.elapsed_seconds
                if previous.state == pb.JOB_STATE_SUCCEEDED:
                    clock.state, clock.done, clock.total = (
                        pb.JOB_STATE_SUCCEEDED,
                        previous.items_done,
                        previous.items_total,
                    )
                    clock.unit = previous.unit

    def _index(self, stage: StageId) -> int:
        for index, clock in enumerate(self._clocks):
            if clock.stage == stage:
                return index
        raise ValueError(f"stage {stage} is not one of this job's stages")

    def update(
        self, stage: StageId, done: int, total: int, unit: str = "", message: str = ""
    ) -> pb.Progress:
        """Records that ``stage`` has done ``done`` of ``total`` items; earlier stages finish."""
        with self._lock:
            now = self.clock()
            index = self._index(stage)
            for earlier in self._clocks[:index]:
                if earlier.state != pb.JOB_STATE_SUCCEEDED:
                    earlier.state = pb.JOB_STATE_SUCCEEDED
                    earlier.finished = earlier.finished or now
                    earlier.done = max(earlier.done, earlier.total)
            clock = self._clocks[index]
            if clock.started is None:
                clock.started = now
            elif clock.finished is not None and clock.state != pb.JOB_STATE_SUCCEEDED:
                # Resumed after a pause or failure: the stopped span counts, the wait does not.
                clock.elapsed_before += clock.finished - clock.started
                clock.started, clock.finished = now, None
            if clock.total and (total != clock.total or done < clock.done):
                clock.phase_from = self._elapsed(clock, now)
                clock.counted_from = None
            if clock.counted_from is None and done > 0:
                clock.counted_from = (self._elapsed(clock, now), done)
            clock.state = pb.JOB_STATE_RUNNING
            clock.done, clock.total = done, total
            clock.unit = unit or clock.unit
            self._current = index
            self._state = pb.JOB_STATE_RUNNING
            if message:
                self._message = message
            return self._render(now)

    def finish_stage(self, stage: StageId) -> pb.Progress:
        """Marks ``stage`` done; one that a later stage already finished keeps its end time."""
        with self._lock:
            now = self.clock()
            clock = self._clocks[self._index(stage)]
            clock.finished = clock.finished or now
            clock.started = clock.started if clock.started is not None else clock.finished
            clock.state = pb.JOB_STATE_SUCCEEDED
            clock.done = max(clock.done, clock.total)
            return self._render(now)

    def set_state(
        self, state: JobStateId, message: str = "", error: status_pb2.Status | None = None
    ) -> pb.Progress:
        with self._lock:
            now = self.clock()
            self._state = state
            if message:
                self._message = message
            self._error = error
            if state == pb.JOB_STATE_SUCCEEDED:
                for clock in self._clocks:
                    clock.state = pb.JOB_STATE_SUCCEEDED
                    clock.finished = clock.finished or now
                    clock.done = max(clock.done, clock.total)
            elif state in TERMINAL_STATES or state == pb.JOB_STATE_PAUSED:
                for clock in self._clocks:
                    if clock.state == pb.JOB_STATE_RUNNING:
                        clock.state = state
                        clock.finished = now
            return self._render(now)

    def snapshot(self) -> pb.Progress:
        with self._lock:
            return self._render(self.clock())

    def _elapsed(self, clock: _StageClock, now: float) -> float:
        if clock.started is None:
            return clock.elapsed_before
        return clock.elapsed_before + ((clock.finished or now) - clock.started)

    def _stage_fraction(self, clock: _StageClock) -> float:
        if clock.state == pb.JOB_STATE_SUCCEEDED:
            return 1.0
        return min(1.0, clock.done / clock.total) if clock.total > 0 else 0.0

    def _eta(self, now: float, overall: float, elapsed_total: float) -> float:
        """Seconds left: a stage under way at its own measured rate, one without a rate yet
        (not begun, starting up, or its count just started over) at the job's measured seconds
        per unit of weight (weights alone are only a guess). Unknown (-1) before anything is
        done; 0 once everything counted is, while the job records its end."""
        if overall >= 1.0:
            return 0.0
        if overall <= 0.0:
            return -1.0
        per_weight = self._seconds_per_weight(now, overall, elapsed_total)
        remaining = 0.0
        for weight, clock in zip(self._weights, self._clocks, strict=True):
            fraction = self._stage_fraction(clock)
            if fraction >= 1.0:
                continue
            if self._has_own_rate(clock, fraction):
                remaining += self._own_eta(clock, now, fraction)
            else:  # its predicted whole at the job's speed, less what it has spent
                remaining += max(0.0, weight * per_weight - self._elapsed(clock, now))
        return remaining

    def _seconds_per_weight(self, now: float, overall: float, elapsed_total: float) -> float:
        """The job's measured seconds per unit of weight, from the stages done and those under
        way with a rate of their own (as their projected whole: elapsed plus their own ETA), so
        neither a stage's start-up nor a count started over is taken for its pace; from all
        the time so far over the fraction done while no stage has either."""
        seconds, weights = 0.0, 0.0
        for weight, clock in zip(self._weights, self._clocks, strict=True):
            fraction = self._stage_fraction(clock)
            if fraction >= 1.0:
                seconds += self._elapsed(clock, now)
                weights += weight
            elif self._has_own_rate(clock, fraction):
                seconds += self._elapsed(clock, now) + self._own_eta(clock, now, fraction)
                weights += weight
        return seconds / weights if weights > 0 else elapsed_total / overall

    @staticmethod
    def _has_own_rate(clock: _StageClock, fraction: float) -> bool:
        counted = clock.counted_from is not None and clock.done > clock.counted_from[1]
        return fraction >= _OWN_RATE_FROM or counted

    def _own_eta(self, clock: _StageClock, now: float, fraction: float) -> float:
        """Seconds left of a stage under way at its own rate: since its first counted item
        when it has counted more since, else since its count last began."""
        elapsed = self._elapsed(clock, now)
        if clock.counted_from is not None and clock.total > 0:
            at, done = clock.counted_from
            if clock.done > done and elapsed > at:
                per_item = (elapsed - at) / (clock.done - done)
                return per_item * (clock.total - clock.done)
        return (elapsed - clock.phase_from) / fraction * (1.0 - fraction)

    def _render(self, now: float) -> pb.Progress:
        self._sequence += 1
        stages = []
        for clock in self._clocks:
            fraction = self._stage_fraction(clock)
            elapsed = self._elapsed(clock, now)
            eta = self._own_eta(clock, now, fraction) if 0.0 < fraction < 1.0 else -1.0
            stages.append(
                pb.StageProgress(
                    stage=clock.stage,
                    state=clock.state,
                    items_done=clock.done,
                    items_total=clock.total,
                    unit=clock.unit,
                    elapsed_seconds=elapsed,
                    eta_seconds=0.0 if fraction >= 1.0 else eta,
                )
            )
        overall = sum(
            w * self._stage_fraction(c) for w, c in zip(self._weights, self._clocks, strict=True)
        )
        elapsed_total = sum(self._elapsed(c, now) for c in self._clocks)
        eta_total = self._eta(now, overall, elapsed_total)
        self._fraction_shown = max(self._fraction_shown, overall)
        current = self._clocks[self._current]
        return pb.Progress(
            job_id=self.job_id,
            sequence=self._sequence,
            state=self._state,
            stage=current.stage,
            stage_index=self._current,
            stage_count=len(self._clocks),
            items_done=current.done,
            items_total=current.total,
            unit=current.unit,
            fraction=1.0 if self._state == pb.JOB_STATE_SUCCEEDED else self._fraction_shown,
            elapsed_seconds=elapsed_total,
            eta_seconds=0.0 if self._state in TERMINAL_STATES else eta_total,
            message=self._message,
            stages=stages,
            error=self._error,
        )


M = TypeVar("M")


class JobChannel(Generic[M]):
    """Latest-value broadcast of one job's stream messages to any number of watchers.

    Watchers get the current message first, then each newer one (intermediate updates may be
    coalesced when a watcher is slow), and the stream ends after a terminal message.
    """

    def __init__(self, initial: M, is_terminal: Callable[[M], bool]) -> None:
        self._latest = initial
        self._version = 0
        self._is_terminal = is_terminal
        self._condition = threading.Condition()
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._threads_watching = 0

    @property
    def watched(self) -> bool:
        """Whether anyone watches now (a job run elsewhere is followed only while watched)."""
        with self._condition:
            return self._threads_watching > 0 or bool(self._async_waiters)

    def publish(self, message: M) -> None:
        with self._condition:
            self._latest = message
            self._version += 1
            self._condition.notify_all()
            waiters = list(self._async_waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    @property
    def latest(self) -> M:
        with self._condition:
            return self._latest

    def watch(
        self, still_wanted: Callable[[], bool] = lambda: True, poll_seconds: float = 0.5
    ) -> Iterator[M]:
        """Yields messages until a terminal one, or until ``still_wanted()`` turns false."""
        with self._condition:
            self._threads_watching += 1
        try:
            seen = -1
            while True:
                with self._condition:
                    while self._version == seen:
                        self._condition.wait(timeout=poll_seconds)
                        if self._version == seen and not still_wanted():
                            return
                    seen, message = self._version, self._latest
                yield message
                if self._is_terminal(message):
                    return
        finally:
            with self._condition:
                self._threads_watching -= 1

    async def watch_async(
        self, still_wanted: Callable[[], bool] = lambda: True, poll_seconds: float = 2.0
    ) -> AsyncIterator[M]:
        """Like :meth:`watch` for asyncio servers: a waiting watcher holds an event, no thread."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._condition:
            self._async_waiters.add(waiter)
        try:
            seen = -1
            while True:
                with self._condition:
                    version, message = self._version, self._latest
                if version == seen:
                    try:
                        await asyncio.wait_for(waiter[1].wait(), poll_seconds)
                    except TimeoutError:
                        if not still_wanted():
                            return
                    waiter[1].clear()
                    continue
                seen = version
                yield message
                if self._is_terminal(message):
                    return
        finally:
            with self._condition:
                self._async_waiters.discard(waiter)
