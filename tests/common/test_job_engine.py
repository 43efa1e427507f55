"""The job engine on an in-memory JobStore: start, watch, stop, recover, leases, stops and
watchers on an instance that does not hold the job, and an end state that reaches watchers even
while the store cannot take it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import pytest
from google.protobuf import wrappers_pb2
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.errors import FailedPrecondition, NotFound, Unavailable
from mistudio_common.jobs.control import StopReason
from mistudio_common.jobs.engine import JobEngine
from mistudio_common.jobs.kind import Leasing, Retention, Snapshot, first_progress
from mistudio_common.jobs.running import RunningJob
from mistudio_common.jobs.store import Claim, JobRecord, JobUpdate
from mistudio_common.progress import StageId
from mistudio_common.retry import Patience

Checkpoint = wrappers_pb2.Int64Value
"""Batches done: the typed checkpoint of these test jobs."""
Outcome = wrappers_pb2.StringValue
STAGES: tuple[StageId, ...] = (ppb.STAGE_VALIDATING, ppb.STAGE_GENERATING_FILES)
BATCHES = 5
STOPPABLE = (ppb.JOB_STATE_QUEUED, ppb.JOB_STATE_RUNNING)


@dataclass
class MemoryStore:
    """A JobStore (and Leases) double; ``down`` makes every write fail as an unreachable store
    does."""

    records: dict[str, JobRecord[Checkpoint, Outcome]] = field(default_factory=dict)
    holders: dict[str, str] = field(default_factory=dict)
    ended_at: dict[str, float] = field(default_factory=dict)
    down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, job_id: str) -> JobRecord[Checkpoint, Outcome]:
        record: JobRecord[Checkpoint, Outcome] = JobRecord(
            job_id, ppb.JOB_STATE_QUEUED, first_progress(job_id, STAGES), Checkpoint()
        )
        self.records[job_id] = record
        return record

    def load(self, job_id: str) -> JobRecord[Checkpoint, Outcome]:
        if job_id not in self.records:
            raise NotFound(f"no job {job_id}", fix="start it")
        return self.records[job_id]

    def write(self, job_id: str, update: JobUpdate[Checkpoint, Outcome]) -> StopReason | None:
        if self.down:
            raise Unavailable("the store is down", fix="wait")
        with self.lock:
            if update.finished:
                self.ended_at[job_id] = time.time()
            old = self.records[job_id]
            checkpoint = Checkpoint()
            checkpoint.CopyFrom(
                update.checkpoint if update.checkpoint is not None else old.checkpoint
            )
            self.records[job_id] = replace(
                old,
                state=update.state,
                progress=update.progress,
                checkpoint=checkpoint,
                outcome=update.outcome or old.outcome,
                started=old.started or update.started,
                requested=old.requested if update.state in STOPPABLE else None,
            )
            return self.records[job_id].requested

    def unfinished(self) -> Iterator[JobRecord[Checkpoint, Outcome]]:
        return iter([r for r in self.records.values() if r.state in STOPPABLE])

    def ended_before(self, cutoff: float) -> Iterator[str]:
        return iter([job_id for job_id, at in self.ended_at.items() if at < cutoff])

    def claim(self, job_id: str, holder: str, lease_seconds: float) -> Claim:
        with self.lock:
            requested = self.records[job_id].requested
            if lease_seconds == 0:
                if self.holders.get(job_id) == holder:
                    del self.holders[job_id]
                return Claim(True)
            if self.holders.get(job_id, holder) != holder:
                return Claim(False)
            self.holders[job_id] = holder
            return Claim(True, requested)

    def request(self, job_id: str, reason: StopReason) -> None:
        with self.lock:
            record = self.records[job_id]
            if record.state not in STOPPABLE:
                raise FailedPrecondition(f"job {job_id} stopped", fix="read it again")
            if record.requested is not StopReason.CANCEL:
                self.records[job_id] = replace(record, requested=reason)


@dataclass
class Batches:
    """Work of BATCHES batches; each waits for ``gate`` so a test decides when it runs."""

    gate: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    runs: list[int] = field(default_factory=list)
    polls_control: bool = False
    """Whether a stop also ends the wait at the gate, as a batch loop polling its control."""

    @property
    def stages(self) -> Sequence[StageId]:
        return STAGES

    def run(self, job: RunningJob[Checkpoint]) -> Outcome:
        self.runs.append(job.checkpoint.value)
        job.report(ppb.STAGE_VALIDATING, 1, 1)
        while job.checkpoint.value < BATCHES:
            while not self.gate.acquire(timeout=0.01):
                if self.polls_control:
                    job.check()
            job.checkpoint.value += 1
            job.report(ppb.STAGE_GENERATING_FILES, job.checkpoint.value, BATCHES, "batches")
            job.save()
        return Outcome(value=f"{job.job_id} done")


@dataclass
class Kind:
    work: Batches
    store: MemoryStore
    failure_note: str = ""
    ended_with: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    """Per job: the end state it was freed at, the state its record and its watchers showed
    then, and the batches of the checkpoint it was given."""
    engine: JobEngine[Checkpoint, Outcome] | None = None

    def prepare(self, record: JobRecord[Checkpoint, Outcome]) -> Batches:
        return self.work

    def ended(self, job_id: str, state: ppb.JobState.ValueType, checkpoint: Checkpoint) -> None:
        assert self.engine is not None
        watched = self.engine.channel(job_id).latest.progress.state
        stored = self.store.records[job_id].state
        self.ended_with[job_id] = (state, stored, watched, checkpoint.value)

    def expire(self, job_id: str) -> None:
        del self.store.records[job_id], self.store.ended_at[job_id]


def engine(
    store: MemoryStore,
    work: Batches,
    holder: str = "",
    retention: Retention | None = None,
    lease_seconds: float = 3.0,
    housekeeping_seconds: float = 0.05,
    kind: Kind | None = None,
) -> JobEngine[Checkpoint, Outcome]:
    kind = kind or Kind(work, store)
    kind.engine = JobEngine(
        store,
        kind,
        patience=Patience(seconds=0.05, first_delay=0.01),
        leasing=Leasing(holder, store, seconds=lease_seconds) if holder else None,
        housekeeping_seconds=housekeeping_seconds,
        follow_seconds=0.05,
        retention=retention,
    )
    return kind.engine


def watch(engine: JobEngine[Checkpoint, Outcome], job_id: str) -> list[Snapshot[Outcome]]:
    return list(engine.channel(job_id).watch())


def until(engine: JobEngine[Checkpoint, Outcome], job_id: str, done: int) -> None:
    for snapshot in engine.channel(job_id).watch():
        if snapshot.progress.items_done >= done and snapshot.progress.unit == "batches":
            return


def test_a_job_runs_its_stages_and_watchers_get_a_snapshot_first_and_the_outcome_last() -> None:
    store, work = MemoryStore(), Batches()
    jobs = engine(store, work)
    jobs.launch(store.add("a"), work)
    for _ in range(BATCHES):
        work.gate.release()
    seen = watch(jobs, "a")
    assert seen[0].progress.job_id == "a"
    assert seen[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert seen[-1].outcome == Outcome(value="a done")
    assert store.records["a"].state == ppb.JOB_STATE_SUCCEEDED
    assert [s.progress.sequence for s in seen] == sorted({s.progress.sequence for s in seen})


def test_a_paused_job_resumes_from_its_checkpoint() -> None:
    store, work = MemoryStore(), Batches()
    jobs = engine(store, work)
    jobs.launch(store.add("p"), work)
    work.gate.release()
    work.gate.release()
    until(jobs, "p", 2)
    work.gate.release()  # lets the running batch reach its save, where the pause takes effect
    assert jobs.pause("p", wait_seconds=5) == ppb.JOB_STATE_PAUSED
    assert store.records["p"].state == ppb.JOB_STATE_PAUSED
    paused_at = store.records["p"].checkpoint.value
    jobs.resume("p")
    for _ in range(BATCHES):
        work.gate.release()
    assert watch(jobs, "p")[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert work.runs == [0, paused_at]


RAN, AWAY = 0.3, 0.6
"""Seconds a test job runs (waiting at its gate) and seconds it is paused or its service down."""


def test_elapsed_keeps_the_time_run_before_a_pause_and_leaves_the_pause_out() -> None:
    """Issue 11: after a 5 s pause, elapsed showed 15 s for ~35 s of wall time."""
    store, work = MemoryStore(), Batches()
    jobs = engine(store, work)
    started = time.monotonic()
    jobs.launch(store.add("t"), work)
    work.gate.release()
    until(jobs, "t", 1)
    time.sleep(RAN)
    work.gate.release()
    assert jobs.pause("t", wait_seconds=5) == ppb.JOB_STATE_PAUSED
    paused = time.monotonic()
    at_pause = store.records["t"].progress.elapsed_seconds
    time.sleep(AWAY)
    assert jobs.channel("t").latest.progress.elapsed_seconds == at_pause
    jobs.resume("t")
    resumed = time.monotonic()
    for _ in range(BATCHES):
        work.gate.release()
    final = watch(jobs, "t")[-1].progress
    wall = time.monotonic() - started
    assert RAN <= at_pause <= final.elapsed_seconds <= wall - (resumed - paused)


def test_elapsed_carries_over_a_restart_and_leaves_the_downtime_out() -> None:
    store, work = MemoryStore(), Batches()
    first = engine(store, work)
    started = time.monotonic()
    first.launch(store.add("r"), work)
    work.gate.release()
    until(first, "r", 1)
    time.sleep(RAN)
    first.shutdown(timeout_seconds=0.05)
    work.gate.release()  # the worker reaches its save, stores its progress and stops
    while first.live("r") is not None:
        time.sleep(0.01)
    stopped = time.monotonic()
    time.sleep(AWAY)
    restarted = time.monotonic()
    second = engine(store, work)
    second.recover()
    for _ in range(BATCHES):
        work.gate.release()
    final = watch(second, "r")[-1].progress
    wall = time.monotonic() - started
    assert RAN <= final.elapsed_seconds <= wall - (restarted - stopped)


def test_cancel_ends_the_job_and_drops_its_checkpoint() -> None:
    store, work = MemoryStore(), Batches()
    jobs = engine(store, work)
    jobs.launch(store.add("c"), work)
    work.gate.release()
    until(jobs, "c", 1)
    work.gate.release()
    assert jobs.cancel("c", wait_seconds=5) == ppb.JOB_STATE_CANCELLED
    assert store.records["c"].checkpoint == Checkpoint()
    assert watch(jobs, "c")[-1].progress.error.message == "cancelled by request"


def ended(kind: Kind, job_id: str) -> tuple[int, int, int, int]:
    while job_id not in kind.ended_with:  # freed by the worker after its end is published
        threading.Event().wait(0.01)
    return kind.ended_with[job_id]


def test_what_a_job_held_is_freed_only_once_its_end_is_stored_and_watched() -> None:
    """Issue 14: an export's staging was removed before its end was stored, seconds on which
    a finished job still showed as running; the kind still gets the checkpoint to free."""
    store, work = MemoryStore(), Batches()
    kind = Kind(work, store)
    jobs = engine(store, work, kind=kind)
    jobs.launch(store.add("s"), work)
    for _ in range(BATCHES):
        work.gate.release()
    succeeded = ppb.JOB_STATE_SUCCEEDED
    assert ended(kind, "s") == (succeeded, succeeded, succeeded, BATCHES)
    jobs.launch(store.add("c"), work)
    work.gate.release()
    until(jobs, "c", 1)
    work.gate.release()
    jobs.cancel("c", wait_seconds=5)
    cancelled = ppb.JOB_STATE_CANCELLED
    assert ended(kind, "c") == (cancelled, cancelled, cancelled, 2)
    assert store.records["c"].checkpoint == Checkpoint()


def test_recovery_resumes_running_jobs_with_sequence_numbers_that_keep_increasing() -> None:
    store, work = MemoryStore(), Batches()
    first = engine(store, work)
    first.launch(store.add("r"), work)
    work.gate.release()
    work.gate.release()
    until(first, "r", 2)
    before = first.channel("r").latest.progress.sequence
    first.shutdown(timeout_seconds=0.2)  # the worker waits at its gate: the process "dies"
    work.gate.release()
    after_restart = engine(store, work)
    after_restart.recover()
    for _ in range(BATCHES):
        work.gate.release()
    seen = watch(after_restart, "r")
    assert seen[0].progress.sequence > before
    assert seen[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert work.runs[-1] >= 2


def test_a_second_instance_adopts_a_job_only_once_the_first_lease_is_gone() -> None:
    store, work = MemoryStore(), Batches()
    holder = engine(store, work, holder="one")
    holder.launch(store.add("l"), work)
    work.gate.release()
    until(holder, "l", 1)
    second = engine(store, work, holder="two")
    second.recover()
    assert store.holders["l"] == "one"
    holder.shutdown(timeout_seconds=0.2)  # a lease given back, as an expired one would be
    work.gate.release()
    for _ in range(BATCHES):
        work.gate.release()
    assert watch(second, "l")[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert store.records["l"].state == ppb.JOB_STATE_SUCCEEDED


def test_an_end_state_the_store_cannot_take_still_reaches_watchers_and_is_stored_later() -> None:
    store, work = MemoryStore(), Batches()
    jobs = engine(store, work)
    jobs.launch(store.add("e"), work)
    for _ in range(BATCHES - 1):
        work.gate.release()
    until(jobs, "e", BATCHES - 1)
    store.down = True
    work.gate.release()
    seen = watch(jobs, "e")
    assert seen[-1].progress.state == ppb.JOB_STATE_FAILED  # its last save could not land
    assert store.records["e"].state == ppb.JOB_STATE_RUNNING
    assert jobs.live("e") == seen[-1]
    assert watch(jobs, "e") == [seen[-1]]  # a late watcher gets the end state from memory
    store.down = False
    while store.records["e"].state == ppb.JOB_STATE_RUNNING:
        threading.Event().wait(0.05)
    assert store.records["e"].state == seen[-1].progress.state
    jobs.shutdown()


def test_a_cancel_asked_of_an_instance_that_does_not_hold_the_job_stops_the_holders_run() -> None:
    store, work = MemoryStore(), Batches(polls_control=True)
    holder, other = engine(store, work, holder="one"), engine(store, work, holder="two")
    holder.launch(store.add("x"), work)
    work.gate.release()
    until(holder, "x", 1)
    assert other.cancel("x", wait_seconds=5) == ppb.JOB_STATE_CANCELLED
    assert watch(holder, "x")[-1].progress.error.message == "cancelled by request"
    for _ in range(BATCHES):
        work.gate.release()  # a run that went on would finish now and overwrite the state
    holder.shutdown()
    assert store.records["x"].state == ppb.JOB_STATE_CANCELLED
    assert store.records["x"].requested is None
    assert work.runs == [0]


def test_a_holder_sees_a_stop_asked_elsewhere_with_its_next_progress_write() -> None:
    """Long before its next lease renewal: the store's reply to the write carries the stop."""
    store, work = MemoryStore(), Batches()
    holder = engine(store, work, "one", lease_seconds=3600.0, housekeeping_seconds=3600.0)
    other = engine(store, work, holder="two")
    holder.launch(store.add("p"), work)
    work.gate.release()
    until(holder, "p", 1)
    assert other.pause("p", wait_seconds=0) == ppb.JOB_STATE_RUNNING  # asked, not yet done
    work.gate.release()  # the next batch writes its progress, then saves
    deadline = time.monotonic() + 10
    while store.records["p"].state != ppb.JOB_STATE_PAUSED and time.monotonic() < deadline:
        threading.Event().wait(0.05)
    assert store.records["p"].state == ppb.JOB_STATE_PAUSED
    assert store.records["p"].checkpoint.value == 2  # stopped at the save after that write
    holder.shutdown()
    other.shutdown()


def test_a_pause_asked_elsewhere_keeps_the_checkpoint_and_the_job_resumes_from_it() -> None:
    store, work = MemoryStore(), Batches(polls_control=True)
    holder, other = engine(store, work, holder="one"), engine(store, work, holder="two")
    holder.launch(store.add("y"), work)
    work.gate.release()
    until(holder, "y", 1)
    assert other.pause("y", wait_seconds=5) == ppb.JOB_STATE_PAUSED
    paused_at = store.records["y"].checkpoint.value
    assert paused_at == 1 and holder.live("y") is None  # the holder stopped and let go
    other.resume("y")
    for _ in range(BATCHES):
        work.gate.release()
    assert watch(other, "y")[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert work.runs == [0, paused_at]


def test_a_stop_asked_of_a_holder_that_crashed_is_carried_out_by_the_instance_adopting_it() -> None:
    store, work = MemoryStore(), Batches()
    store.add("z")
    store.write("z", JobUpdate(ppb.JOB_STATE_RUNNING, store.records["z"].progress))
    store.request("z", StopReason.CANCEL)  # its holder died before it renewed its lease
    adopter = engine(store, work, holder="two")
    adopter.recover()
    assert watch(adopter, "z")[-1].progress.state == ppb.JOB_STATE_CANCELLED
    assert work.runs == []


def test_a_watcher_on_an_instance_that_does_not_run_the_job_follows_its_record() -> None:
    store, work = MemoryStore(), Batches()
    holder, other = engine(store, work, holder="one"), engine(store, work, holder="two")
    holder.launch(store.add("w"), work)
    seen: list[Snapshot[Outcome]] = []
    watcher = threading.Thread(target=lambda: seen.extend(watch(other, "w")))
    watcher.start()
    for _ in range(BATCHES):
        work.gate.release()
        threading.Event().wait(0.2)  # longer than the follow interval: each batch is seen
    watcher.join(timeout=10)
    assert seen[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert seen[-1].outcome == Outcome(value="w done")
    done = [s.progress.items_done for s in seen if s.progress.unit == "batches"]
    assert len(done) >= 3 and done == sorted(done)  # live updates, not just the end
    holder.shutdown()
    other.shutdown()


def test_retention_removes_jobs_that_ended_longer_ago_than_it_and_keeps_the_others() -> None:
    store, work = MemoryStore(), Batches(polls_control=True)
    jobs = engine(store, work, retention=Retention(seconds=60.0, every=3600.0))
    jobs.launch(store.add("old"), work)
    for _ in range(BATCHES):
        work.gate.release()
    assert watch(jobs, "old")[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    jobs.launch(store.add("running"), work)
    assert jobs.expire_finished() == []  # "old" ended just now
    assert jobs.expire_finished(now=time.time() + 61.0) == ["old"]
    assert set(store.records) == {"running"}
    with pytest.raises(NotFound):
        jobs.channel("old")
    jobs.cancel("running", wait_seconds=0.0)
    jobs.shutdown(timeout_seconds=0.2)


class CountedLeftovers:
    def __init__(self) -> None:
        self.passes: list[float | None] = []

    def remove(self, now: float | None = None) -> None:
        self.passes.append(now)


def test_jobs_kept_until_deleted_still_have_their_leftovers_removed_by_retention() -> None:
    """An export service keeps finished jobs until deleted by default; its retention passes
    still remove what crashed and cancelled jobs left (staging, half-written uploads)."""
    store, work, leftovers = MemoryStore(), Batches(polls_control=True), CountedLeftovers()
    jobs = engine(store, work, retention=Retention(None, every=3600.0, leftovers=leftovers))
    jobs.launch(store.add("done"), work)
    for _ in range(BATCHES):
        work.gate.release()
    assert watch(jobs, "done")[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    later = time.time() + 10**9
    assert jobs.retain(now=later) == []
    assert set(store.records) == {"done"}
    assert leftovers.passes[-1] == later
    jobs.shutdown(timeout_seconds=0.2)
