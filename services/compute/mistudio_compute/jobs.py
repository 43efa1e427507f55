"""Dashboard computations on the common job engine: what is particular to a computation.

A start validates and loads everything before a job exists; the engine runs the job in its own
thread, and clients watch it and may disconnect and reattach at will. Records live on this
service's disk (:mod:`mistudio_compute.job_records`), so a job interrupted by a restart resumes
from its checkpoint. A paused job resumes when the same request_id is started again. A cancel
of a computation id that has no job yet leaves a tombstone, so a start that arrives after it
(from a client that crashed while asking, whose job another instance cancelled) ends CANCELLED
without computing anything.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from google.rpc import code_pb2, status_pb2
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_job_pb2 as jpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio_common.computations import computation_id_for, is_computation_id
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_codec import params_key, params_to_pb
from mistudio_common.dashboard_options import computation_stages
from mistudio_common.errors import MistudioError, NotFound, Unavailable
from mistudio_common.jobs.control import JobControl
from mistudio_common.jobs.engine import JobEngine
from mistudio_common.jobs.kind import Retention, Snapshot, first_progress
from mistudio_common.jobs.running import RunningJob
from mistudio_common.progress import TERMINAL_STATES, JobChannel, StageId
from mistudio_common.repeated_requests import differing_fields, refuse_a_different_request
from mistudio_common.retry import Patience
from mistudio_common.stage_rates import (
    NO_SHARD_COSTS,
    JobSize,
    RateFile,
    ShardCosts,
    stage_times,
)

from mistudio_compute.config import ComputeSettings
from mistudio_compute.dashboard_sink import DashboardSink
from mistudio_compute.dashboards.shard_states import ShardStore
from mistudio_compute.job_records import ComputeRecord, JobRecords
from mistudio_compute.messages import computation_request_to_pb
from mistudio_compute.store_client import StoreClient
from mistudio_compute.values import ComputationRequest

log = logging.getLogger(__name__)

_PROGRESS_INTERVAL_SECONDS = 0.1


def job_stages(params: DashboardParams) -> list[StageId]:
    """The job's stages: the stage of a part the request leaves out is absent."""
    runs = computation_stages(params.omitted)
    return [ppb.STAGE_VALIDATING, *runs, ppb.STAGE_CACHING]


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
    interrupt: JobControl
    """Set when the job must stop at the next batch boundary (pause, cancel or shutdown)."""
    checkpoint_dir: Path
    on_finalised: Callable[[Sequence[dpb.FeatureDashboard]], None]
    """Receives dashboards as soon as they are final, to be cached in the store."""
    shard_states: ShardStore | None = None
    """Where Ray shards' states are kept when every replica should find them (None: beside
    the checkpoint)."""
    shard_costs: ShardCosts = NO_SHARD_COSTS
    """The predicted finalisation and model forward that a sharded pass stage counts besides
    the features' passes."""


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
    def params(self) -> DashboardParams:
        """The request's parameters with defaults and the token fingerprint filled in."""
        ...

    @property
    def feature_indices(self) -> Sequence[int]: ...

    def size(self, features: int) -> JobSize:
        """What the stage costs of computing ``features`` of them grow with."""
        ...

    def run(self, features: Sequence[int], hooks: RunHooks) -> RunStats: ...


class Preparer(Protocol):
    def prepare(self, request: ComputationRequest) -> PreparedComputation:
        """Validates and loads everything; raises InvalidArgument/NotFound before any job exists."""
        ...


ComputeSnapshot = Snapshot[cpb.ComputeResult]
RunningComputation = RunningJob[jpb.ComputationCheckpoint]


def progress_message(snapshot: ComputeSnapshot) -> cpb.ComputeProgress:
    return cpb.ComputeProgress(progress=snapshot.progress, result=snapshot.outcome)


@dataclass(frozen=True)
class _Computation:
    """One prepared computation as the engine runs it."""

    prepared: PreparedComputation
    manager: ComputeJobManager

    @property
    def stages(self) -> Sequence[StageId]:
        return job_stages(self.prepared.params)

    def run(self, job: RunningComputation) -> cpb.ComputeResult:
        return self.manager.run(job, self.prepared)


class ComputeJobManager:
    """Starts, tracks, cancels and resumes dashboard computations."""

    failure_note = ""

    def __init__(self, settings: ComputeSettings, preparer: Preparer, store: StoreClient) -> None:
        root = Path(settings.data_dir) / "compute"
        self.records = JobRecords(root / "jobs")
        self.rates = RateFile(root / "stage_rates.json")
        self._preparer = preparer
        self._store = store
        self._patience = Patience(settings.fault_patience_seconds)
        self._state_bucket = settings.ray_state_bucket()
        retention = Retention(
            settings.finished_job_retention_seconds, settings.retention_sweep_seconds
        )
        self._engine: JobEngine[jpb.ComputationCheckpoint, cpb.ComputeResult] = JobEngine(
            self.records, self, patience=self._patience, retention=retention
        )
        self._lock = threading.Lock()
        self._starting: dict[str, threading.Lock] = {}
        self._recording = threading.Lock()
        """Held while a start checks for a tombstone and records (and launches) its job, and
        while a cancel looks for a job and leaves a tombstone: each sees the other's whole."""

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, request: ComputationRequest) -> str:
        """Starts a job, or returns the existing one for a repeated request (resuming it when
        it is paused); the same request_id with a different request is ALREADY_EXISTS."""
        if not request.request_id:
            request = replace(request, request_id=uuid.uuid4().hex)
        job_id = computation_id_for(request.request_id)
        if self._engine.stopping:
            raise Unavailable(
                "the compute service is shutting down", fix="retry on the restarted service"
            )
        with self._lock:
            gate = self._starting.setdefault(job_id, threading.Lock())
        with gate:  # two concurrent starts with one id must not both prepare and run
            try:
                existing = self.records.load(job_id)
            except NotFound:
                existing = None
            if existing is not None:
                started = self.records.request(job_id)
                refuse_a_different_request(
                    request.request_id,
                    job_id,
                    differing_fields(
                        computation_request_to_pb(started),
                        computation_request_to_pb(request),
                        "request",
                    ),
                    field="request.request_id",
                )
                if existing.state == ppb.JOB_STATE_PAUSED:
                    self._engine.resume(job_id)
                return job_id
            if self.records.has_tombstone(job_id):  # nothing to load for it
                return self._record_cancelled(job_id, request)
            prepared = self._preparer.prepare(request)
            with self._recording:
                if self.records.has_tombstone(job_id):  # cancelled while it was prepared
                    return self._record_cancelled(job_id, request)
                queued = first_progress(job_id, job_stages(request.params))
                record = self.records.create(job_id, request, queued)
                self._engine.launch(record, _Computation(prepared, self))
            return job_id

    def _record_cancelled(self, job_id: str, request: ComputationRequest) -> str:
        """Records the start of a computation cancelled before it: the job exists (a repeated
        request finds it) but ended CANCELLED without running."""
        error = status_pb2.Status(
            code=code_pb2.CANCELLED, message="cancelled by request before it started"
        )
        progress = first_progress(job_id, job_stages(request.params))
        progress.state, progress.message = ppb.JOB_STATE_CANCELLED, error.message
        progress.error.CopyFrom(error)
        self.records.create(job_id, request, progress)
        self.records.remove_tombstone(job_id)
        log.info("a start came after its cancel; nothing runs", extra={"job_id": job_id})
        return job_id

    def channel(self, job_id: str) -> JobChannel[ComputeSnapshot]:
        return self._engine.channel(job_id)

    def cancel(self, job_id: str, wait_seconds: float = 5.0) -> ppb.JobState.ValueType:
        """Asks the job to stop at its next batch boundary and waits briefly for it; a paused
        job is cancelled at once. Either way its checkpoint is discarded. An id with no job is
        NotFound (nothing was running), and is remembered: a start of it ends CANCELLED."""
        with self._recording:
            try:
                state = self.records.load(job_id).state
            except NotFound:
                if not is_computation_id(job_id):
                    raise  # no request id gives it, so no start can come
                self.records.add_tombstone(job_id)
                raise NotFound(
                    f"no computation with job id {job_id!r} has started; a start of it "
                    "will end cancelled",
                    resource_type="mistudio.compute.v1.Computation",
                    resource_name=job_id,
                    fix="nothing to do: nothing of it was running",
                ) from None
        if state in TERMINAL_STATES:
            return state
        return self._engine.cancel(job_id, wait_seconds)

    def pause(self, job_id: str, wait_seconds: float = 5.0) -> ppb.JobState.ValueType:
        """Asks the job to stop at its next batch boundary, keeping its checkpoint."""
        state = self.records.load(job_id).state
        if state in TERMINAL_STATES or state == ppb.JOB_STATE_PAUSED:
            return state
        return self._engine.pause(job_id, wait_seconds)

    def resume_unfinished(self) -> None:
        """Unfinished jobs restart from their checkpoint; paused ones wait for their client."""
        self._engine.recover()

    def shutdown(self, wait_seconds: float = 30.0) -> None:
        """Stops running jobs at a checkpoint; they resume when the service starts again."""
        self._engine.shutdown(wait_seconds)

    # --- the engine's view of a computation -------------------------------------------------

    def prepare(self, record: ComputeRecord) -> _Computation:
        """Prepares a stored request again (model, SAE, tokens) to run it from its checkpoint."""
        return _Computation(self._preparer.prepare(self.records.request(record.job_id)), self)

    def ended(
        self,
        job_id: str,
        state: ppb.JobState.ValueType,
        checkpoint: jpb.ComputationCheckpoint,
    ) -> None:
        """A finished computation cannot resume, so its checkpoint folder (and shard states
        in the state bucket) are only storage use."""
        self.records.drop_checkpoint(job_id)
        try:
            self._clear_shard_states(job_id)
        except MistudioError as error:
            log.warning("shard states of %s stay until its retention: %s", job_id, error)

    def expire(self, job_id: str) -> None:
        """Past the retention only the dashboards cached in the store stay: shard states that
        could not be removed when the job ended go now (or the record waits for the next pass)."""
        self._clear_shard_states(job_id)
        self.records.remove(job_id)

    def _clear_shard_states(self, job_id: str) -> None:
        if self._state_bucket is not None:
            self._state_bucket.computation(job_id).clear()

    def expire_finished(self, now: float | None = None) -> list[str]:
        """One retention pass (the engine runs one every ``retention_sweep_seconds``)."""
        return self._engine.expire_finished(now)

    def run(self, job: RunningComputation, prepared: PreparedComputation) -> cpb.ComputeResult:
        started = time.monotonic()
        sink = DashboardSink(
            self._store,
            prepared.sae_id,
            prepared.params,
            owner=prepared.sae_owner,
            patience=self._patience,
        )
        try:
            job.report(ppb.STAGE_VALIDATING, 1, 1, "checks")
            self._plan(job, prepared)
            todo = list(job.checkpoint.features)
            rates, size = self.rates.rates(), prepared.size(len(todo))
            job.tracker.weigh(rates.predict(job.tracker.stages, size))  # ETA by measured rates
            hooks = RunHooks(
                progress=_reporter(job),
                interrupt=job.control,
                checkpoint_dir=self.records.checkpoint_dir(job.job_id),
                on_finalised=sink.add,
                shard_states=(
                    None
                    if self._state_bucket is None
                    else self._state_bucket.computation(job.job_id)
                ),
                shard_costs=rates.shard_costs(job.tracker.stages, size),
            )
            stats = prepared.run(todo, hooks) if todo else None
            job.report(ppb.STAGE_CACHING, sink.written, len(todo), "features")
            sink.close()
        except BaseException:
            sink.abort()
            raise
        return self._result(job, prepared, stats, time.monotonic() - started)

    def _plan(self, job: RunningComputation, prepared: PreparedComputation) -> None:
        """Chooses the features to compute at the first run, so that a resumed job matches its
        checkpoint even though it has cached some dashboards since."""
        if job.checkpoint.planned:
            return
        features = list(prepared.feature_indices)
        cached: set[int] = set()
        request = self.records.request(job.job_id)
        if request.reuse_cached and prepared.sae_id:
            cached = self._store.cached_features(
                prepared.sae_id, prepared.params, prepared.sae_owner
            )
        todo = [f for f in features if f not in cached]
        job.checkpoint.features[:] = todo
        job.checkpoint.features_reused = len(features) - len(todo)
        job.checkpoint.planned = True
        job.save()

    def _result(
        self,
        job: RunningComputation,
        prepared: PreparedComputation,
        stats: RunStats | None,
        seconds: float,
    ) -> cpb.ComputeResult:
        computed, reused = len(job.checkpoint.features), job.checkpoint.features_reused
        tokens = stats.tokens_processed if stats else 0
        result = cpb.ComputeResult(
            features_computed=computed,
            features_reused=reused,
            params_key=params_key(prepared.params),
            tokens_processed=tokens,
            tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
            final_batch_size=stats.final_batch_size if stats else 0,
            peak_memory_mb=stats.peak_memory_mb if stats else 0.0,
            device=stats.device if stats else "",
            params=params_to_pb(prepared.params),
        )
        if stats is not None:
            job.finish_stage(ppb.STAGE_CACHING)
            measured = stage_times(job.tracker.snapshot(), prepared.size(computed))
            self.rates.record(measured)
        log.info("computation finished", extra={"job_id": job.job_id, "result": str(result)})
        return result


def _reporter(
    job: RunningComputation,
) -> Callable[[StageId, int, int, str, str], None]:
    """Progress from the computation's batches, at most every _PROGRESS_INTERVAL_SECONDS
    unless the stage changes, a stage ends or a message comes."""
    last_stage, last_at = [-1], [0.0]

    def report(stage: StageId, done: int, total: int, unit: str, message: str) -> None:
        now = time.monotonic()
        changed = stage != last_stage[0] or done >= total or bool(message)
        if not changed and now - last_at[0] < _PROGRESS_INTERVAL_SECONDS:
            return
        last_stage[0], last_at[0] = stage, now
        job.report(stage, done, total, unit, message)

    return report
