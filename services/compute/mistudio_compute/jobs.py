"""Dashboard computations as jobs that live outside RPC handlers.

A job runs in its own thread; clients watch it through a :class:`JobChannel` and may disconnect
and reattach at will. Each job keeps its request, last progress message and checkpoint on disk
(:mod:`mistudio_compute.job_records`), so a job interrupted by a restart resumes from its
checkpoint with sequence numbers that keep increasing. A client may pause a job: it stops at a
batch boundary, keeps its checkpoint, and resumes when the same request_id is started again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio_common import stages
from mistudio_common.dashboard_codec import params_from_pb, params_key
from mistudio_common.dashboard_options import computation_stages
from mistudio_common.errors import Cancelled, NotFound, Unavailable
from mistudio_common.grpc_errors import status_from_error
from mistudio_common.progress import TERMINAL_STATES, JobChannel, ProgressTracker, StageId
from mistudio_common.retry import Patience

from mistudio_compute.config import ComputeSettings
from mistudio_compute.dashboard_sink import DashboardSink
from mistudio_compute.job_records import JobRecords, RateBook
from mistudio_compute.store_client import StoreClient

log = logging.getLogger(__name__)

_PROGRESS_INTERVAL_SECONDS = 0.1


def _stages_of(params: dpb.DashboardParams) -> list[StageId]:
    """The job's stages: the stage of a part the request leaves out is absent."""
    runs = computation_stages(params_from_pb(params).omitted)
    return [ppb.STAGE_VALIDATING, *runs, ppb.STAGE_CACHING]


def work_share(params: dpb.DashboardParams) -> float:
    """The share of a full computation's time these parameters cost, by the stage weights:
    estimates scale by it, and measured rates are recorded as if for a full computation."""
    return stages.weight(_stages_of(params)) / stages.weight(stages.COMPUTE_STAGES)


_CLIENT_PAUSE_NOTE = "paused by a client; starting the same request_id resumes it"


@dataclass(frozen=True, slots=True)
class RunStats:
    """What a finished run reports about itself, for the ComputeResult."""

    tokens_processed: int
    final_batch_size: int
    device: str
    peak_memory_mb: float


@dataclass(frozen=True)
class RunHooks:
    """How a running computation talks back to its job (all calls come from the job thread)."""

    progress: Callable[[StageId, int, int, str, str], None]
    """(stage, items done, items total, unit, message)."""
    interrupt: threading.Event
    """Set when the job must stop at the next batch boundary (cancel or shutdown)."""
    checkpoint_dir: Path
    on_finalised: Callable[[Sequence[dpb.FeatureDashboard]], None]
    """Receives dashboards as soon as they are final, to be cached in the store."""


class PreparedComputation(Protocol):
    """A validated request with its SAE, model and tokens loaded, ready to run."""

    @property
    def sae_id(self) -> str:
        """The store's SAE id; empty for an SAE given as files (nothing is cached then)."""
        ...

    @property
    def sae_owner(self) -> str:
        """The store SAE's owner: an sae_id is unique per owner."""
        ...

    @property
    def params(self) -> dpb.DashboardParams:
        """The request's parameters with defaults and the token fingerprint filled in."""
        ...

    @property
    def feature_indices(self) -> Sequence[int]: ...

    def run(self, features: Sequence[int], hooks: RunHooks) -> RunStats: ...


class Preparer(Protocol):
    def prepare(self, request: cpb.ComputeDashboardsRequest) -> PreparedComputation:
        """Validates and loads everything; raises InvalidArgument/NotFound before any job exists."""
        ...


def job_id_for(request_id: str) -> str:
    """Deterministic, so a retried start finds its job even after a restart."""
    return "cmp-" + hashlib.sha256(request_id.encode()).hexdigest()[:24]


def _is_terminal(message: cpb.ComputeProgress) -> bool:
    return message.progress.state in TERMINAL_STATES


@dataclass
class ComputeJob:
    job_id: str
    request: cpb.ComputeDashboardsRequest
    tracker: ProgressTracker
    channel: JobChannel[cpb.ComputeProgress]
    interrupt: threading.Event = field(default_factory=threading.Event)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    pause_requested: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def state(self) -> ppb.JobState.ValueType:
        return self.channel.latest.progress.state


class ComputeJobManager:
    """Starts, tracks, cancels and resumes dashboard computations."""

    def __init__(self, settings: ComputeSettings, preparer: Preparer, store: StoreClient) -> None:
        root = Path(settings.data_dir) / "compute"
        self._records = JobRecords(root / "jobs")
        self.rates = RateBook(root / "rates.json", settings.default_token_features_per_second)
        self._preparer = preparer
        self._store = store
        self._patience = Patience(settings.fault_patience_seconds)
        self._jobs: dict[str, ComputeJob] = {}
        self._lock = threading.Lock()
        self._starting: dict[str, threading.Lock] = {}
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, request: cpb.ComputeDashboardsRequest) -> ComputeJob:
        """Starts a job, or returns the existing one for a repeated request_id (resuming it
        when it is paused)."""
        if not request.request_id:
            request = _with_request_id(request, uuid.uuid4().hex)
        job_id = job_id_for(request.request_id)
        if self._stopping:
            raise Unavailable(
                "the compute service is shutting down", fix="retry on the restarted service"
            )
        with self._lock:
            gate = self._starting.setdefault(job_id, threading.Lock())
        with gate:  # two concurrent starts with one id must not both prepare and run
            existing = self._jobs.get(job_id)
            if existing is not None:
                if existing.state == ppb.JOB_STATE_PAUSED and not existing.running:
                    self._resume_paused(existing)
                return existing
            prepared = self._preparer.prepare(request)
            self._records.save_request(job_id, request)
            job = self._new_job(job_id, request)
            self._launch(job, prepared)
            return job

    def get(self, job_id: str) -> ComputeJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(
                f"no computation with job id {job_id!r}",
                resource_type="mistudio.compute.v1.Computation",
                resource_name=job_id,
                fix="use the job_id from the first ComputeDashboards message",
            )
        return job

    def cancel(self, job_id: str, wait_seconds: float = 5.0) -> ppb.JobState.ValueType:
        """Asks the job to stop at its next batch boundary and waits briefly for it; a paused
        job is cancelled at once. Either way its checkpoint is discarded."""
        job = self.get(job_id)
        if job.state not in TERMINAL_STATES:
            job.cancel_requested.set()
            job.interrupt.set()
            if job.thread is not None:
                job.thread.join(wait_seconds)
            if job.state == ppb.JOB_STATE_PAUSED and not job.running:
                self._records.mark_paused(job.job_id, False)
                cancelled = Cancelled("cancelled by a client while paused")
                self._finish_with_error(job, ppb.JOB_STATE_CANCELLED, cancelled)
        return job.state

    def pause(self, job_id: str, wait_seconds: float = 5.0) -> ppb.JobState.ValueType:
        """Asks the job to stop at its next batch boundary, keeping its checkpoint."""
        job = self.get(job_id)
        if job.state not in TERMINAL_STATES and job.state != ppb.JOB_STATE_PAUSED:
            job.pause_requested.set()
            job.interrupt.set()
            if job.thread is not None:
                job.thread.join(wait_seconds)
        return job.state

    def resume_unfinished(self) -> None:
        """Registers every stored job; unfinished ones restart from their checkpoint."""
        for stored in self._records.load_all():
            job = self._new_job(stored.job_id, stored.request, stored.progress)
            if stored.progress is not None and _is_terminal(stored.progress):
                continue
            if stored.paused_by_client:
                paused = job.tracker.set_state(ppb.JOB_STATE_PAUSED, _CLIENT_PAUSE_NOTE)
                self._publish(job, paused)
                continue
            log.info("resuming computation", extra={"job_id": stored.job_id})
            self._publish(
                job, job.tracker.set_state(ppb.JOB_STATE_RUNNING, "resuming after restart")
            )
            job.thread = threading.Thread(
                target=self._resume, args=(job,), name=f"compute-{job.job_id}", daemon=True
            )
            job.thread.start()

    def shutdown(self, wait_seconds: float = 30.0) -> None:
        """Stops running jobs at a checkpoint; they resume when the service starts again."""
        self._stopping = True
        jobs = list(self._jobs.values())
        for job in jobs:
            job.interrupt.set()
        deadline = time.monotonic() + wait_seconds
        for job in jobs:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))

    # --- internals -------------------------------------------------------------------------

    def _new_job(
        self,
        job_id: str,
        request: cpb.ComputeDashboardsRequest,
        last: cpb.ComputeProgress | None = None,
    ) -> ComputeJob:
        tracker = stages.tracker(job_id, _stages_of(request.params))
        if last is not None:
            tracker.restore(last.progress)
        initial = last if last is not None and _is_terminal(last) else None
        if initial is None:
            initial = cpb.ComputeProgress(progress=tracker.set_state(ppb.JOB_STATE_QUEUED))
            self._records.save_progress(job_id, initial)
        job = ComputeJob(job_id, request, tracker, JobChannel(initial, _is_terminal))
        with self._lock:
            self._jobs[job_id] = job
        return job

    def _launch(self, job: ComputeJob, prepared: PreparedComputation) -> None:
        thread = threading.Thread(
            target=self._run, args=(job, prepared), name=f"compute-{job.job_id}", daemon=True
        )
        job.thread = thread
        thread.start()

    def _resume_paused(self, job: ComputeJob) -> None:
        for event in (job.interrupt, job.pause_requested, job.cancel_requested):
            event.clear()
        self._records.mark_paused(job.job_id, False)
        self._publish(job, job.tracker.set_state(ppb.JOB_STATE_RUNNING, "resuming after pause"))
        job.thread = threading.Thread(
            target=self._resume, args=(job,), name=f"compute-{job.job_id}", daemon=True
        )
        job.thread.start()

    def _resume(self, job: ComputeJob) -> None:
        """Prepares a stored request again (model, SAE, tokens) and runs it from its checkpoint."""
        try:
            prepared = self._preparer.prepare(job.request)
        except Exception as error:
            self._finish_with_error(job, ppb.JOB_STATE_FAILED, error)
            return
        self._run(job, prepared)

    def _publish(
        self, job: ComputeJob, progress: ppb.Progress, result: cpb.ComputeResult | None = None
    ) -> None:
        message = cpb.ComputeProgress(progress=progress, result=result)
        # Persist before publishing: a watcher must never see a sequence a restart would reuse.
        self._records.save_progress(job.job_id, message)
        job.channel.publish(message)

    def _progress_reporter(self, job: ComputeJob) -> Callable[[StageId, int, int, str, str], None]:
        last = {"stage": -1, "at": 0.0}

        def report(stage: StageId, done: int, total: int, unit: str, message: str) -> None:
            now = time.monotonic()
            changed = stage != last["stage"] or done >= total or bool(message)
            if not changed and now - last["at"] < _PROGRESS_INTERVAL_SECONDS:
                return
            last["stage"], last["at"] = stage, now
            self._publish(job, job.tracker.update(stage, done, total, unit, message))

        return report

    def _run(self, job: ComputeJob, prepared: PreparedComputation) -> None:
        started = time.monotonic()
        sink = DashboardSink(
            self._store,
            prepared.sae_id,
            prepared.params,
            owner=prepared.sae_owner,
            patience=self._patience,
        )
        try:
            self._publish(job, job.tracker.update(ppb.STAGE_VALIDATING, 1, 1, "checks"))
            todo, reused = self._plan(job, prepared)
            hooks = RunHooks(
                progress=self._progress_reporter(job),
                interrupt=job.interrupt,
                checkpoint_dir=self._records.checkpoint_dir(job.job_id),
                on_finalised=sink.add,
            )
            stats = prepared.run(todo, hooks) if todo else None
            caching = job.tracker.update(ppb.STAGE_CACHING, sink.written, len(todo), "features")
            self._publish(job, caching)
            sink.close()
            self._succeed(job, prepared, todo, reused, stats, time.monotonic() - started)
        except Exception as error:
            sink.abort()
            if job.interrupt.is_set() and not job.cancel_requested.is_set():
                self._pause(job)
            elif job.interrupt.is_set():
                cancelled = Cancelled("cancelled by a client")
                self._finish_with_error(job, ppb.JOB_STATE_CANCELLED, cancelled)
            else:
                log.exception("computation failed", extra={"job_id": job.job_id})
                self._finish_with_error(job, ppb.JOB_STATE_FAILED, error)

    def _plan(self, job: ComputeJob, prepared: PreparedComputation) -> tuple[list[int], int]:
        """(features to compute, features reused), fixed at the first run so that a resumed
        job matches its checkpoint even though it has cached some dashboards since."""
        stored = self._records.load_plan(job.job_id)
        if stored is not None:
            return stored
        features = list(prepared.feature_indices)
        cached: set[int] = set()
        if job.request.reuse_cached and prepared.sae_id:
            cached = self._store.cached_features(
                prepared.sae_id, prepared.params, prepared.sae_owner
            )
        todo = [f for f in features if f not in cached]
        reused = len(features) - len(todo)
        self._records.save_plan(job.job_id, todo, reused)
        return todo, reused

    def _succeed(
        self,
        job: ComputeJob,
        prepared: PreparedComputation,
        todo: list[int],
        reused: int,
        stats: RunStats | None,
        seconds: float,
    ) -> None:
        tokens = stats.tokens_processed if stats else 0
        result = cpb.ComputeResult(
            features_computed=len(todo),
            features_reused=reused,
            params_key=params_key(params_from_pb(prepared.params)),
            tokens_processed=tokens,
            tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
            final_batch_size=stats.final_batch_size if stats else 0,
            peak_memory_mb=stats.peak_memory_mb if stats else 0.0,
            device=stats.device if stats else "",
            params=prepared.params,
        )
        if stats is not None:
            self.rates.record(tokens, len(todo), seconds / work_share(prepared.params))
        message = f"{len(todo)} computed, {reused} reused"
        self._publish(job, job.tracker.set_state(ppb.JOB_STATE_SUCCEEDED, message), result)
        self._records.drop_checkpoint(job.job_id)
        log.info("computation finished", extra={"job_id": job.job_id, "result": str(result)})

    def _pause(self, job: ComputeJob) -> None:
        """A client's pause or a service shutdown: the job stays resumable on disk."""
        if job.pause_requested.is_set():
            self._records.mark_paused(job.job_id, True)
            note = _CLIENT_PAUSE_NOTE
        else:
            note = "service stopping; resumes on restart"
        self._publish(job, job.tracker.set_state(ppb.JOB_STATE_PAUSED, note))

    def _finish_with_error(
        self, job: ComputeJob, state: ppb.JobState.ValueType, error: BaseException
    ) -> None:
        status = status_from_error(error)
        self._publish(job, job.tracker.set_state(state, status.message, error=status))
        self._records.drop_checkpoint(job.job_id)


def _with_request_id(
    request: cpb.ComputeDashboardsRequest, request_id: str
) -> cpb.ComputeDashboardsRequest:
    copy = cpb.ComputeDashboardsRequest()
    copy.CopyFrom(request)
    copy.request_id = request_id
    return copy
