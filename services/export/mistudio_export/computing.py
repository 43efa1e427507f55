"""Dashboard data for an export, asked of the compute service and relayed as export progress.

Cached dashboards for the same parameters are reused (``reuse_cached``), never recomputed. The
computation lives in the compute service: if this service restarts, the job re-attaches to it
by its request id. A pause pauses the computation too, keeping its checkpoint, and the resumed
export re-attaches to it by the same request id, which resumes it where it stopped. A cancel or
failure ends it; the next run starts a new attempt that reuses whatever reached the cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio_common.errors import Cancelled, MistudioError, Unavailable
from mistudio_common.grpc_errors import error_from_status

from mistudio_export.clients import ComputeClient
from mistudio_export.runtime import Interruption, JobInterrupted, JobRuntime

log = logging.getLogger(__name__)

COMPUTE_STAGES = (
    ppb.STAGE_ACTIVATION_PASS,
    ppb.STAGE_LOADING_EXAMPLES,
    ppb.STAGE_LOGIT_LENS,
    ppb.STAGE_HISTOGRAMS,
    ppb.STAGE_TOKEN_AGGREGATION,
    ppb.STAGE_CACHING,
)
CHECKPOINT_KEY = "compute"
PAUSED_JOB_KEY = "paused_job"
_STAGE_NOTES = {
    ppb.STAGE_ACTIVATION_PASS: "activation pass over the tokens",
    ppb.STAGE_LOADING_EXAMPLES: "loading activation examples",
    ppb.STAGE_LOGIT_LENS: "logit lens",
    ppb.STAGE_HISTOGRAMS: "histograms",
    ppb.STAGE_TOKEN_AGGREGATION: "aggregating tokens",
    ppb.STAGE_CACHING: "caching dashboard data",
}


def compute_request(
    job: JobRuntime, indices: list[int], *, all_features: bool, attempt: int
) -> cpb.ComputeDashboardsRequest:
    plan = job.plan
    request = cpb.ComputeDashboardsRequest(
        request_id=f"{job.job_id}/dashboards/{attempt}",
        sae=cpb.SaeReference(sae_id=plan.sae.sae_id),
        feature_indices=[] if all_features else indices,
        params=plan.params,
        batch_size=plan.batch_size,
        device=plan.device,
        reuse_cached=True,
    )
    if plan.tokens is not None:
        request.tokens.CopyFrom(plan.tokens)
    return request


def ensure_dashboards(
    job: JobRuntime, compute: ComputeClient, indices: list[int], *, all_features: bool
) -> dict[str, Any]:
    """Runs (or re-attaches to) the computation of ``indices``; returns its checkpointed summary."""
    state: dict[str, Any] = dict(job.checkpoint.get(CHECKPOINT_KEY) or {})
    if state.get("done"):
        return state
    attempt = int(state.get("attempt", 0))
    request = compute_request(job, indices, all_features=all_features, attempt=attempt)
    followed = _Followed()
    try:
        last = _follow(job, compute, request, followed)
    except (JobInterrupted, MistudioError) as stop:
        # After a shutdown the computation goes on in the compute service, and after a pause it
        # waits there with its checkpoint: the next run re-attaches to the same attempt. A
        # computation that was cancelled or failed cannot be re-attached: the next run starts a
        # new attempt (which reuses whatever reached the cache).
        reason = stop.reason if isinstance(stop, JobInterrupted) else None
        if reason is Interruption.PAUSE and followed.resumable:
            job.checkpoint[CHECKPOINT_KEY] = {"attempt": attempt, PAUSED_JOB_KEY: followed.job_id}
        elif reason is not Interruption.SHUTDOWN:
            job.checkpoint[CHECKPOINT_KEY] = {"attempt": attempt + 1}
        raise
    result = last.result
    state = {
        "done": True,
        "attempt": attempt,
        "features_computed": int(result.features_computed),
        "features_reused": int(result.features_reused),
        "tokens_processed": int(result.tokens_processed),
        "device": result.device,
        "params": json_format.MessageToDict(result.params),
    }
    for stage in COMPUTE_STAGES:
        if stage in job.plan.stages:
            job.finish_stage(stage)
    job.save(**{CHECKPOINT_KEY: state})
    return state


def release_paused(compute: ComputeClient, checkpoint: dict[str, Any]) -> None:
    """Cancels the computation a paused export left waiting, when that export is cancelled."""
    paused = (checkpoint.get(CHECKPOINT_KEY) or {}).get(PAUSED_JOB_KEY)
    if paused:
        try:
            compute.cancel_computation(str(paused))
        except MistudioError as error:
            log.warning("could not cancel paused computation %s: %s", paused, error)


@dataclass
class _Followed:
    """What ``_follow`` learned about the computation it followed."""

    job_id: str = ""
    resumable: bool = False
    """Paused (or pausing, or already finished) on our pause: the same request_id picks it up."""


def _follow(
    job: JobRuntime,
    compute: ComputeClient,
    request: cpb.ComputeDashboardsRequest,
    followed: _Followed,
) -> cpb.ComputeProgress:
    stream = compute.compute_dashboards(request)

    def interrupt() -> None:
        reason = job.control.reason
        try:
            if followed.job_id and reason is Interruption.PAUSE:
                state = compute.pause_computation(followed.job_id)
                followed.resumable = state not in (ppb.JOB_STATE_FAILED, ppb.JOB_STATE_CANCELLED)
            elif followed.job_id and reason is Interruption.CANCEL:
                compute.cancel_computation(followed.job_id)
        except MistudioError as error:
            log.warning("could not %s computation %s: %s", reason, followed.job_id, error)
        stream.detach()

    last: cpb.ComputeProgress | None = None
    with job.control.on_interrupt(interrupt):
        try:
            for message in stream:
                last = message
                if not followed.job_id and message.progress.job_id:
                    followed.job_id = message.progress.job_id
                    if job.control.reason is not None:
                        interrupt()
                _relay(job, message.progress)
                if message.progress.state in (
                    ppb.JOB_STATE_SUCCEEDED,
                    ppb.JOB_STATE_FAILED,
                    ppb.JOB_STATE_CANCELLED,
                ):
                    break
        except Cancelled:
            job.check()
            raise
    job.check()
    if last is None:
        raise Unavailable(
            "the compute service closed the progress stream without a message",
            fix="check the compute service's logs, then resume the export",
        )
    state = last.progress.state
    if state == ppb.JOB_STATE_SUCCEEDED:
        return last
    if state == ppb.JOB_STATE_FAILED and last.progress.HasField("error"):
        raise error_from_status(last.progress.error)
    raise Unavailable(
        f"the dashboard computation ended in state {ppb.JobState.Name(state)}",
        fix="resume the export to start the computation again",
    )


def _relay(job: JobRuntime, progress: ppb.Progress) -> None:
    """Shows the compute job's current stage as the same stage of the export."""
    p = progress
    if p.stage in job.plan.stages:
        note = p.message or f"computing dashboards: {_STAGE_NOTES.get(p.stage, 'checking')}"
        job.report(p.stage, p.items_done, p.items_total, p.unit, note)


def computed_params(state: dict[str, Any]) -> dpb.DashboardParams | None:
    """The params the dashboards were cached under, as ComputeResult reported them."""
    saved = state.get("params")
    return json_format.ParseDict(saved, dpb.DashboardParams()) if saved else None
