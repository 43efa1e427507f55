"""The job engine: long jobs started, watched, paused, resumed and cancelled outside any RPC.

Each job runs its work in a worker thread. Its state, progress snapshot and typed checkpoint live
in a :class:`~mistudio_common.jobs.store.JobStore`, so a restarted service resumes the jobs it
left running from their last checkpoint, with sequence numbers that keep increasing. Watchers
attach to a per-job channel whose first message is the current snapshot and whose last is the
end state, even when that end state could not be stored yet (it is stored once the store is back).
Where instances share a store, each holds a renewed lease on the jobs it runs and adopts another
instance's job only once that lease has run out. A pause or cancel asked of an instance that does
not hold the job is recorded on it; the holder reads it in the store's reply to its next
progress write, or at its lease renewal, and stops the job through its
:class:`~mistudio_common.jobs.control.JobControl`, as for its own clients. Such an instance's
watchers follow the job's record (:mod:`~mistudio_common.jobs.following`). Finished
jobs past their :class:`~mistudio_common.jobs.kind.Retention` are removed, each by its kind.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Generic

from google.rpc import code_pb2, status_pb2
from mistudio.common.v1 import progress_pb2 as ppb

from mistudio_common.errors import FailedPrecondition, MistudioError
from mistudio_common.grpc_errors import status_from_error
from mistudio_common.jobs.control import JobControl, JobStopped, StopReason
from mistudio_common.jobs.following import Follower, publish_if_newer, runs_elsewhere
from mistudio_common.jobs.kind import (
    JobKind,
    Leasing,
    Retention,
    Snapshot,
    Work,
    is_final,
    snapshot_of,
)
from mistudio_common.jobs.recording import JobEntry, JobRecorder, next_progress, tracker_for
from mistudio_common.jobs.running import RunningJob
from mistudio_common.jobs.store import C, JobRecord, JobStore, JobUpdate, O
from mistudio_common.progress import TERMINAL_STATES, JobChannel
from mistudio_common.retry import Patience, call_with_patience, is_transient

log = logging.getLogger(__name__)


class JobEngine(Generic[C, O]):
    """Owns every job of one kind that this process runs or watches."""

    def __init__(
        self,
        store: JobStore[C, O],
        kind: JobKind[C, O],
        *,
        patience: Patience,
        persist_seconds: float = 0.0,
        max_running: int = 0,
        leasing: Leasing | None = None,
        housekeeping_seconds: float = 5.0,
        follow_seconds: float = 1.0,
        retention: Retention | None = None,
    ) -> None:
        self._store = store
        self._recorder = JobRecorder(store, persist_seconds)
        self._kind = kind
        self._patience = patience
        self._slots = threading.Semaphore(max_running) if max_running > 0 else None
        self._leasing = leasing
        self._entries: dict[str, JobEntry[C, O]] = {}
        self._starting: set[str] = set()
        self._lock = threading.Lock()
        self._shutdown = threading.Event()
        tick = min(housekeeping_seconds, leasing.renew_every) if leasing else housekeeping_seconds
        self._tick = tick
        self._follow_seconds = follow_seconds
        self._retention = retention
        self._retained_at = -math.inf
        self._housekeeper = threading.Thread(target=self._housekeep, name="jobs", daemon=True)
        self._housekeeper.start()
        self._follower: Follower[C, O] | None = None
        if leasing is not None:  # only a shared store holds jobs that run elsewhere
            self._follower = Follower(store, self._followed, follow_seconds, self._shutdown)

    # -- starting and watching -------------------------------------------------------------

    def launch(self, record: JobRecord[C, O], work: Work[C, O] | None = None) -> bool:
        """Runs a stored job here (``work`` when already prepared), unless another instance
        holds it or it already runs; True when it started."""
        entry = self._entry(record)
        if entry.running or self._shutdown.is_set() or not self._claim(entry):
            return False
        if entry.tracker is None and record.started:
            # Watchers of a resumed job never see a sequence number it may have used before.
            note = "resuming from its checkpoint"
            entry.channel.publish(Snapshot(next_progress(entry, record, record.state, note)))
        entry.control = JobControl(self._shutdown)
        if record.requested is not None:  # asked of a holder that stopped before it could act
            entry.control.request(record.requested)
        entry.thread = threading.Thread(
            target=self._work, args=(entry, record, work), name=f"job-{record.job_id[:8]}"
        )
        entry.thread.daemon = True
        entry.thread.start()
        return True

    @contextmanager
    def starting(self, job_id: str) -> Iterator[None]:
        """Keeps recovery off a job while its service records and launches it."""
        with self._lock:
            self._starting.add(job_id)
        try:
            yield
        finally:
            with self._lock:
                self._starting.discard(job_id)

    def channel(self, job_id: str) -> JobChannel[Snapshot[O]]:
        """The job's channel: its latest snapshot first, then updates until an end state."""
        with self._lock:
            entry = self._entries.get(job_id)
        if entry is not None and (entry.running or entry.unrecorded or entry.channel.latest.final):
            return entry.channel
        record = self._store.load(job_id)
        if record.state in TERMINAL_STATES:
            return JobChannel(snapshot_of(record), is_final)
        entry = self._entry(record)
        if not (entry.running or entry.held):  # a channel this instance last updated long ago
            publish_if_newer(entry, snapshot_of(record))
        return entry.channel

    def live(self, job_id: str) -> Snapshot[O] | None:
        """The in-memory snapshot of a job this process runs (fresher than its record), or of
        one whose end state is not stored yet."""
        with self._lock:
            entry = self._entries.get(job_id)
        if entry is None or not (entry.running or entry.unrecorded):
            return None
        return entry.channel.latest

    @property
    def stopping(self) -> bool:
        return self._shutdown.is_set()

    # -- control ---------------------------------------------------------------------------

    def pause(self, job_id: str, wait_seconds: float) -> ppb.JobState.ValueType:
        """Stops the job at its next boundary, keeping its checkpoint."""
        record = self._store.load(job_id)
        if record.state == ppb.JOB_STATE_PAUSED:
            return record.state
        if record.state not in (ppb.JOB_STATE_QUEUED, ppb.JOB_STATE_RUNNING):
            raise _cannot(job_id, record.state, "pause")
        entry = self._entry(record)
        if self._stop(entry, StopReason.PAUSE, wait_seconds):
            return entry.channel.latest.progress.state
        if not self._claim(entry):
            return self._ask_holder(job_id, StopReason.PAUSE, wait_seconds)
        record = self._unheld(entry)
        if record.state in _STOPPABLE:
            self._recorder.record(entry, record, ppb.JOB_STATE_PAUSED, "paused by a client")
        self._release(entry)
        return entry.channel.latest.progress.state

    def cancel(self, job_id: str, wait_seconds: float) -> ppb.JobState.ValueType:
        """Stops the job at its next boundary and drops its checkpoint."""
        record = self._store.load(job_id)
        if record.state == ppb.JOB_STATE_SUCCEEDED:
            raise FailedPrecondition(
                f"job {job_id} has already succeeded; there is nothing to cancel",
                field="job_id",
                fix="delete the job if its result is no longer wanted",
            )
        if record.state == ppb.JOB_STATE_CANCELLED:
            return record.state
        entry = self._entry(record)
        if self._stop(entry, StopReason.CANCEL, wait_seconds):
            return entry.channel.latest.progress.state
        if not self._claim(entry):
            return self._ask_holder(job_id, StopReason.CANCEL, wait_seconds)
        self._cancelled(entry, self._unheld(entry))
        return entry.channel.latest.progress.state

    def resume(self, job_id: str) -> None:
        """Runs a paused or failed job again from its checkpoint."""
        record = self._store.load(job_id)
        if record.state in (ppb.JOB_STATE_SUCCEEDED, ppb.JOB_STATE_CANCELLED):
            raise _cannot(job_id, record.state, "resume")
        entry = self._entry(record)
        if entry.running:
            return
        if not self._claim(entry):
            raise FailedPrecondition(
                f"job {job_id} is held by another instance of this service",
                field="job_id",
                fix="resume it there, or wait until that instance's lease on it runs out",
            )
        # Stored before the worker starts, so a Get or Watch right after a resume sees the job
        # queued again, never the end state it is leaving.
        self._recorder.record(entry, record, ppb.JOB_STATE_QUEUED, "resuming from its checkpoint")
        self.launch(self._store.load(job_id))

    def _unheld(self, entry: JobEntry[C, O]) -> JobRecord[C, O]:
        """The record of a job nobody runs, now that this instance holds it, with its stored
        checkpoint (what a cancel frees)."""
        record = self._store.load(entry.job_id)
        entry.checkpoint.CopyFrom(record.checkpoint)
        return record

    def _ask_holder(
        self, job_id: str, reason: StopReason, wait_seconds: float
    ) -> ppb.JobState.ValueType:
        """Records the stop for the instance that holds the job, which carries it out once its
        next progress write or lease renewal tells it; waits up to ``wait_seconds`` for the
        state it records."""
        assert self._leasing is not None  # without leases every claim is granted
        with suppress(FailedPrecondition):  # the job stopped meanwhile; its record says how
            self._leasing.leases.request(job_id, reason)
        deadline = time.monotonic() + wait_seconds
        state = self._store.load(job_id).state
        while state in _STOPPABLE and time.monotonic() < deadline:
            if self._shutdown.wait(self._follow_seconds):
                break
            state = self._store.load(job_id).state
        return state

    def recover(self) -> None:
        """After a restart: continue every job that was running or queued when it stopped (and
        that no other live instance holds)."""
        for record in list(self._store.unfinished()):
            with self._lock:
                known = self._entries.get(record.job_id)
                launching = record.job_id in self._starting
            if launching or (known is not None and (known.running or known.held)):
                continue
            if self.launch(record):
                log.info("resuming an unfinished job", extra={"job_id": record.job_id})

    def forget(self, job_id: str) -> None:
        """Drops a deleted job (cancelled first by the caller)."""
        with self._lock:
            self._entries.pop(job_id, None)

    def shutdown(self, timeout_seconds: float = 10.0) -> None:
        """Stops every worker at its next boundary, leaving its job unfinished for a restart."""
        self._shutdown.set()
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            if entry.control is not None:
                entry.control.wake()
        deadline = time.monotonic() + timeout_seconds
        for entry in entries:
            if entry.thread is not None:
                entry.thread.join(max(0.0, deadline - time.monotonic()))
        self._housekeeper.join(timeout=1.0)
        if self._follower is not None:
            self._follower.join()

    # -- the worker ------------------------------------------------------------------------

    def _work(
        self, entry: JobEntry[C, O], record: JobRecord[C, O], work: Work[C, O] | None
    ) -> None:
        assert entry.control is not None
        control, acquired = entry.control, False
        try:
            while self._slots is not None and not (acquired := self._slots.acquire(timeout=0.2)):
                control.check()
            control.check()
            work = work or self._kind.prepare(record)
            if entry.tracker is None:
                entry.tracker = tracker_for(entry.job_id, work.stages, record.progress)
            running = RunningJob(
                job_id=entry.job_id,
                checkpoint=entry.checkpoint,
                tracker=entry.tracker,
                control=control,
                publish=lambda progress: self._recorder.publish(entry, progress),
                persist=lambda: self._recorder.persist(entry, ppb.JOB_STATE_RUNNING),
            )
            self._succeeded(entry, self._run_patiently(entry, work, running))
        except JobStopped as stop:
            self._stopped(entry, record, stop.reason)
        except Exception as error:  # every failure is recorded on the job, never swallowed
            if control.reason is not None:  # the work gave up because it was asked to stop
                self._stopped(entry, record, control.reason)
            else:
                self._failed(entry, record, error)
        finally:
            if acquired and self._slots is not None:
                self._slots.release()

    def _run_patiently(self, entry: JobEntry[C, O], work: Work[C, O], running: RunningJob[C]) -> O:
        """Runs the work; a transient fault (a peer, the database or the object store out of
        reach) is waited out with backoff and the run resumes from the last checkpoint.
        Patience restarts whenever the checkpoint moved on since the last fault."""
        delays = self._patience.delays()
        reached = entry.checkpoint.SerializeToString(deterministic=True)
        while True:
            try:
                self._recorder.running(entry)
                return work.run(running)
            except MistudioError as error:
                if not is_transient(error):
                    raise
                now = entry.checkpoint.SerializeToString(deterministic=True)
                if now != reached:
                    delays, reached = self._patience.delays(), now
                delay = next(delays, None)
                if delay is None:
                    raise
                log.warning("job waits out a fault: %s", error, extra={"job_id": entry.job_id})
                self._recorder.waiting(entry, error, delay)
                running.control.sleep(delay)
                running.control.check()

    def _stop(self, entry: JobEntry[C, O], reason: StopReason, wait_seconds: float) -> bool:
        """Asks a running worker to stop; True when one was running (and has now stopped)."""
        if not entry.running or entry.control is None or entry.thread is None:
            return False
        entry.control.request(reason)
        entry.thread.join(wait_seconds)
        return True

    def _stopped(self, entry: JobEntry[C, O], record: JobRecord[C, O], reason: StopReason) -> None:
        if reason is StopReason.LEASE_LOST:
            log.warning("another instance took the job over", extra={"job_id": entry.job_id})
        elif reason is StopReason.SHUTDOWN:
            try:  # the job stays RUNNING, for the next start of the service
                self._recorder.persist(entry, ppb.JOB_STATE_RUNNING)
            except MistudioError:
                log.warning("could not store progress at shutdown", extra={"job_id": entry.job_id})
            self._release(entry)
        elif reason is StopReason.PAUSE:
            self._recorder.record(
                entry, record, ppb.JOB_STATE_PAUSED, "paused by a client at a checkpoint"
            )
            self._release(entry)
        else:
            self._cancelled(entry, record)

    def _succeeded(self, entry: JobEntry[C, O], outcome: O) -> None:
        assert entry.tracker is not None
        progress = entry.tracker.set_state(ppb.JOB_STATE_SUCCEEDED, "finished")
        self._end(entry, ppb.JOB_STATE_SUCCEEDED, progress, outcome=outcome)

    def _cancelled(self, entry: JobEntry[C, O], record: JobRecord[C, O]) -> None:
        error = status_pb2.Status(code=code_pb2.CANCELLED, message="cancelled by request")
        progress = next_progress(entry, record, ppb.JOB_STATE_CANCELLED, error.message, error)
        self._end(entry, ppb.JOB_STATE_CANCELLED, progress, error=error)

    def _failed(self, entry: JobEntry[C, O], record: JobRecord[C, O], error: BaseException) -> None:
        if not isinstance(error, MistudioError):
            log.exception("job failed", exc_info=error, extra={"job_id": entry.job_id})
        status = status_from_error(error)
        status.message += self._kind.failure_note
        progress = next_progress(entry, record, ppb.JOB_STATE_FAILED, status.message, status)
        self._end(entry, ppb.JOB_STATE_FAILED, progress, error=status)

    def _end(
        self,
        entry: JobEntry[C, O],
        state: ppb.JobState.ValueType,
        progress: ppb.Progress,
        *,
        outcome: O | None = None,
        error: status_pb2.Status | None = None,
    ) -> None:
        """Stores the end state (waiting out a store outage up to the patience), tells the
        watchers, then lets the kind free what the job held. Past the patience the watchers are
        told anyway and the store is retried. The freeing comes last because it is no part of
        the result (removing an export's staging took seconds on a busy disk) and an end state
        is only stored once the job's outputs are complete."""
        held = type(entry.checkpoint)()
        held.CopyFrom(entry.checkpoint)  # what the kind frees: the record's is cleared below
        if state != ppb.JOB_STATE_FAILED:
            entry.checkpoint.Clear()  # a finished job never resumes
        update = JobUpdate(state, progress, entry.checkpoint, outcome, error, finished=True)
        try:
            call_with_patience(lambda: self._recorder.write(entry, update), self._patience)
            self._release(entry)
        except MistudioError:
            log.exception(
                "could not store the job's end; watchers are told and the store is retried",
                extra={"job_id": entry.job_id},
            )
            entry.unrecorded = update
        entry.channel.publish(Snapshot(progress, outcome))
        try:
            self._kind.ended(entry.job_id, state, held)
        except Exception:  # the end stands; retention removes what is left
            log.exception("could not free what an ended job held", extra={"job_id": entry.job_id})

    # -- leases and retries ----------------------------------------------------------------

    def _claim(self, entry: JobEntry[C, O]) -> bool:
        if self._leasing is None or entry.held:
            entry.held = True
            return True
        leasing = self._leasing
        entry.held = leasing.leases.claim(entry.job_id, leasing.holder, leasing.seconds).held
        return entry.held

    def _release(self, entry: JobEntry[C, O]) -> None:
        if self._leasing is not None and entry.held:
            try:
                self._leasing.leases.claim(entry.job_id, self._leasing.holder, 0.0)
            except MistudioError:
                log.warning("could not give a lease back", extra={"job_id": entry.job_id})
        entry.held = False

    def _housekeep(self) -> None:
        """Renews this instance's leases, adopts jobs whose holder stopped renewing, and stores
        end states the store could not take when they happened."""
        while not self._shutdown.wait(self._tick):
            for step in (self._renew, self._record_pending, self._adopt, self._retain):
                try:
                    step()
                except MistudioError as error:
                    log.warning("job housekeeping waits for the store: %s", error)
                except Exception:  # housekeeping must outlive any one bad record
                    log.exception("job housekeeping step failed; the next tick retries")

    def _renew(self) -> None:
        if self._leasing is None:
            return
        with self._lock:
            held = [e for e in self._entries.values() if e.held]
        leasing = self._leasing
        for entry in held:
            try:
                claim = leasing.leases.claim(entry.job_id, leasing.holder, leasing.seconds)
            except MistudioError as error:  # the next tick tries again, within the lease
                log.warning("could not renew a lease: %s", error, extra={"job_id": entry.job_id})
                continue
            if not claim.held and entry.held:
                entry.held = False
                if entry.control is not None:
                    entry.control.request(StopReason.LEASE_LOST)
            elif claim.requested is not None and entry.control is not None:
                log.info("stopping a job as another instance asked", extra={"job_id": entry.job_id})
                entry.control.request(claim.requested)

    def _record_pending(self) -> None:
        with self._lock:
            pending = [e for e in self._entries.values() if e.unrecorded is not None]
        for entry in pending:
            assert entry.unrecorded is not None
            self._recorder.write(entry, entry.unrecorded)
            entry.unrecorded = None
            self._release(entry)
            log.info("stored a job's end state late", extra={"job_id": entry.job_id})

    def _adopt(self) -> None:
        if self._leasing is not None and not self._shutdown.is_set():
            self.recover()

    def _retain(self) -> None:
        if self._retention is None:
            return
        if time.monotonic() - self._retained_at >= self._retention.every:
            self._retained_at = time.monotonic()
            self.retain()

    def retain(self, now: float | None = None) -> list[str]:
        """One retention pass at ``now`` (epoch seconds; default: the present): finished jobs
        past their retention and the service's leftovers; returns the jobs removed."""
        expired = self.expire_finished(now)
        if self._retention is not None and self._retention.leftovers is not None:
            self._retention.leftovers.remove(now)
        return expired

    def expire_finished(self, now: float | None = None) -> list[str]:
        """One retention pass: every job that ended longer than the retention ago is removed
        with what it left (by its kind); returns their ids."""
        if self._retention is None or self._retention.seconds is None:
            return []
        cutoff = (time.time() if now is None else now) - self._retention.seconds
        expired = []
        for job_id in list(self._store.ended_before(cutoff)):
            try:
                self._kind.expire(job_id)
            except MistudioError as error:  # kept for the next pass
                log.warning("could not remove an old job: %s", error, extra={"job_id": job_id})
                continue
            self.forget(job_id)
            expired.append(job_id)
        if expired:
            log.info("removed finished jobs past their retention", extra={"count": len(expired)})
        return expired

    def _followed(self) -> list[JobEntry[C, O]]:
        with self._lock:
            return [e for e in self._entries.values() if runs_elsewhere(e)]

    # -- entries ---------------------------------------------------------------------------

    def _entry(self, record: JobRecord[C, O]) -> JobEntry[C, O]:
        with self._lock:
            entry = self._entries.get(record.job_id)
            if entry is None:
                checkpoint = type(record.checkpoint)()
                checkpoint.CopyFrom(record.checkpoint)
                channel = JobChannel(snapshot_of(record), is_final)
                entry = JobEntry(record.job_id, channel, checkpoint, record.started)
                self._entries[record.job_id] = entry
            return entry


_STOPPABLE = frozenset({ppb.JOB_STATE_QUEUED, ppb.JOB_STATE_RUNNING})


def _cannot(job_id: str, state: int, action: str) -> FailedPrecondition:
    name = ppb.JobState.Name(state).removeprefix("JOB_STATE_").lower()  # type: ignore[arg-type]
    return FailedPrecondition(
        f"job {job_id} is {name}; it cannot {action}",
        field="job_id",
        fix="pause or cancel only queued or running jobs; resume only paused or failed ones",
    )
