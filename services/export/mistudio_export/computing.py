"""Dashboard data for an export, asked of the compute service and relayed as export progress.

Cached dashboards for the same parameters are reused (``reuse_cached``), never recomputed. The
computation lives in the compute service: if this service restarts, the job re-attaches to it
by its request id. So does a job whose connection to compute broke (compute restarting): the
computation goes on there, or resumes from its own checkpoint, under the same request id. A
pause pauses the computation too, keeping its checkpoint, and the resumed export re-attaches
to it by the same request id, which resumes it where it stopped. A cancel or a computation that
ended in failure ends the attempt; the next run starts a new attempt that reuses whatever
reached the cache. So does a resume that asks for other features than its attempt did (compute
refuses a request id reused for another request). The checkpoint names the computation (its
id follows from the request id) before it is asked for and while it may still run, so a cancel
carried out where no run follows it (a paused job, or one adopted from a holder that crashed
even while asking) cancels it too.
"""

from __future__ import annotations

import logging

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio_common import stages
from mistudio_common.computations import computation_id_for
from mistudio_common.errors import AlreadyExists, Cancelled, MistudioError, NotFound, Unavailable
from mistudio_common.jobs.control import StopReason
from mistudio_common.stages import DASHBOARD_STAGES

from mistudio_export.peers import ComputationProgress, ComputationRequest, DashboardComputer
from mistudio_export.runtime import JobRuntime

log = logging.getLogger(__name__)


def compute_request(
    job: JobRuntime, indices: list[int], *, all_features: bool, attempt: int
) -> ComputationRequest:
    plan = job.plan
    return ComputationRequest(
        request_id=f"{job.job_id}/dashboards/{attempt}",
        sae=plan.sae,
        params=plan.params,
        tokens=plan.tokens,
        feature_indices=() if all_features else tuple(indices),
        batch_size=plan.batch_size,
        device=plan.device,
        reuse_cached=True,
    )


def ensure_dashboards(
    job: JobRuntime, compute: DashboardComputer, indices: list[int], *, all_features: bool
) -> cpb.ComputeResult:
    """Runs (or re-attaches to) the computation of ``indices``; returns its checkpointed result."""
    state = job.checkpoint.compute
    if state.HasField("result"):
        return state.result
    attempt = state.attempt
    request = compute_request(job, indices, all_features=all_features, attempt=attempt)
    named = computation_id_for(request.request_id)
    if state.computation_id != named:
        _name(job, named)
    try:
        last = _follow(job, compute, request)
    except AlreadyExists:
        # This attempt's computation was asked for other features (labels or features
        # edited before a resume): it is cancelled and a new attempt asks for these.
        release(compute, job.checkpoint)
        state.attempt = attempt + 1
        state.ClearField("computation_id")
        job.save()
        return ensure_dashboards(job, compute, indices, all_features=all_features)
    except _Ended as ended:
        # A computation that failed or was cancelled cannot be re-attached: the next run starts
        # a new attempt (which reuses whatever reached the cache).
        state.attempt = attempt + 1
        state.ClearField("computation_id")
        raise ended.error from None
    # A stop leaves the computation named in the checkpoint: after a shutdown it goes on in the
    # compute service, after a pause it waits there, and the next run re-attaches to it; a
    # cancel cancels it as the job ends (``release``), whichever instance carries it out.
    state.ClearField("computation_id")
    if last.result is not None:
        state.result.CopyFrom(last.result)
    for stage in DASHBOARD_STAGES:
        if stage in job.plan.stages:
            job.finish_stage(stage)
    job.save()
    return state.result


def release(compute: DashboardComputer, checkpoint: jpb.ExportCheckpoint) -> None:
    """Cancels the computation a cancelled export's checkpoint names: one a pause left
    waiting, or one still running for a holder that crashed. Compute remembers a cancel of a
    computation it has not seen, so a crashed holder's start that reaches it later ends
    CANCELLED without running."""
    computation = checkpoint.compute.computation_id
    if computation:
        try:
            compute.cancel_computation(computation)
        except NotFound:
            log.info("computation %s had not reached the compute service", computation)
        except MistudioError as error:
            log.warning("could not cancel computation %s: %s", computation, error)


def _follow(
    job: JobRuntime, compute: DashboardComputer, request: ComputationRequest
) -> ComputationProgress:
    stream = compute.compute_dashboards(request)
    checkpoint = job.checkpoint.compute

    def interrupt() -> None:
        # A pause keeps the computation waiting with its checkpoint in the compute service;
        # any other stop leaves it to run on, or to the cancel's ``release``.
        computation = checkpoint.computation_id
        if job.control.reason is StopReason.PAUSE and computation:
            try:
                compute.pause_computation(computation)
            except MistudioError as error:
                log.warning("could not pause computation %s: %s", computation, error)
        stream.detach()

    last: ComputationProgress | None = None
    with job.control.on_interrupt(interrupt):
        try:
            for event in stream:
                last = event
                _relay(job, event)
                if event.ended:
                    break
        except Cancelled as lost:
            job.check()  # our own pause or cancel detached the stream
            raise Unavailable(
                "the compute service ended the progress stream (it is restarting?)",
                fix="the export re-attaches to the computation by itself",
            ) from lost
    job.check()
    if last is None:
        raise Unavailable(
            "the compute service closed the progress stream without a message",
            fix="check the compute service's logs, then resume the export",
        )
    state = last.state
    if state == ppb.JOB_STATE_SUCCEEDED:
        return last
    if state == ppb.JOB_STATE_FAILED and last.error is not None:
        raise _Ended(last.error)
    if state in (ppb.JOB_STATE_FAILED, ppb.JOB_STATE_CANCELLED):
        raise _Ended(
            Unavailable(
                f"the dashboard computation ended in state {ppb.JobState.Name(state)}",
                fix="resume the export to start the computation again",
            )
        )
    raise Unavailable(
        f"the progress stream of the computation stopped in state {ppb.JobState.Name(state)}",
        fix="the export re-attaches to the computation by itself",
    )


def _name(job: JobRuntime, computation_id: str) -> None:
    """Saves the computation's id in the checkpoint before it is asked for, so that whoever
    cancels the job (an instance that adopts it after a crash, too) cancels the computation."""
    job.checkpoint.compute.computation_id = computation_id
    job.persist()


class _Ended(Exception):
    """The computation itself ended without success (as opposed to our link to it breaking)."""

    def __init__(self, error: MistudioError) -> None:
        super().__init__(str(error))
        self.error = error


def _relay(job: JobRuntime, progress: ComputationProgress) -> None:
    """Shows the compute job's current stage as the same stage of the export."""
    p = progress
    if p.stage in job.plan.stages:
        spec = stages.spec(p.stage)
        note = p.message or f"computing dashboards: {spec.note if spec else 'checking'}"
        job.report(p.stage, p.items_done, p.items_total, p.unit, note)
