"""The compute stage against an in-memory compute service: it re-attaches to the same
computation after a broken link, starts a new attempt only after a failed computation, and
saves the computation's id so that whoever cancels the export cancels the computation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio_common.computations import computation_id_for
from mistudio_common.errors import AlreadyExists, InvalidArgument, Unavailable
from mistudio_export import computing
from mistudio_export.peers import ComputationProgress, ComputationRequest
from mistudio_export.runtime import JobRuntime

FIRST = computation_id_for("job/dashboards/0")
"""The id the compute service gives the job's first computation."""


def progress(state: ppb.JobState.ValueType, job_id: str = FIRST) -> ComputationProgress:
    return ComputationProgress(job_id, state, stage=ppb.STAGE_ACTIVATION_PASS)


class Stream:
    def __init__(self, messages: list[ComputationProgress], then: Exception | None) -> None:
        self._messages, self._then = messages, then

    def __iter__(self) -> Iterator[ComputationProgress]:
        yield from self._messages
        if self._then is not None:
            raise self._then

    def detach(self) -> None:
        pass


class Compute:
    """Answers each ComputeDashboards call with the next scripted stream."""

    def __init__(self, *streams: Stream) -> None:
        self.streams = list(streams)
        self.requests: list[ComputationRequest] = []
        self.cancelled: list[str] = []

    def compute_dashboards(self, request: ComputationRequest) -> Stream:
        self.requests.append(request)
        return self.streams.pop(0)

    def pause_computation(self, job_id: str) -> None:
        pass

    def cancel_computation(self, job_id: str) -> None:
        self.cancelled.append(job_id)


def succeeded() -> ComputationProgress:
    result = cpb.ComputeResult(features_computed=4, params=dpb.DashboardParams())
    return ComputationProgress(FIRST, ppb.JOB_STATE_SUCCEEDED, result=result)


def test_a_broken_link_reattaches_to_the_same_computation(job: JobRuntime) -> None:
    lost = Unavailable("peer unavailable: connection refused")
    compute = Compute(
        Stream([progress(ppb.JOB_STATE_RUNNING)], then=lost), Stream([succeeded()], then=None)
    )
    with pytest.raises(Unavailable):
        computing.ensure_dashboards(job, compute, [0, 1, 2, 3], all_features=True)
    assert job.checkpoint.compute.attempt == 0
    result = computing.ensure_dashboards(job, compute, [0, 1, 2, 3], all_features=True)
    assert result.features_computed == 4
    assert [r.request_id for r in compute.requests] == ["job/dashboards/0"] * 2
    assert job.checkpoint.compute.result.features_computed == 4


def test_a_failed_computation_is_followed_by_a_new_attempt(job: JobRuntime) -> None:
    failed = ComputationProgress(FIRST, ppb.JOB_STATE_FAILED, error=InvalidArgument("x"))
    compute = Compute(Stream([failed], then=None), Stream([succeeded()], then=None))
    with pytest.raises(InvalidArgument):
        computing.ensure_dashboards(job, compute, [0], all_features=False)
    assert job.checkpoint.compute.attempt == 1
    computing.ensure_dashboards(job, compute, [0], all_features=False)
    assert compute.requests[-1].request_id == "job/dashboards/1"


def test_a_finished_computation_is_not_asked_for_again(job: JobRuntime) -> None:
    job.checkpoint.compute.result.features_computed = 7
    compute = Compute()
    assert computing.ensure_dashboards(job, compute, [0], all_features=False).features_computed == 7
    assert compute.requests == []


def test_the_computation_is_named_in_a_saved_checkpoint_before_it_is_asked_for(
    job: JobRuntime,
) -> None:
    compute = Compute(Stream([progress(ppb.JOB_STATE_RUNNING)] * 3, then=Unavailable("gone")))
    saved: list[tuple[str, int]] = []
    job.persist = lambda: saved.append(
        (job.checkpoint.compute.computation_id, len(compute.requests))
    )
    with pytest.raises(Unavailable):
        computing.ensure_dashboards(job, compute, [0], all_features=False)
    assert saved == [(FIRST, 0)]  # once, before the request: no window where it runs unnamed


def test_a_cancel_after_the_holder_crashed_while_asking_cancels_the_computation(
    job: JobRuntime,
) -> None:
    """The holder asked for the computation and died before compute's first message: the
    stored checkpoint already names it, so the adopter's cancel reaches it."""
    compute = Compute(Stream([], then=Unavailable("the holder was killed")))
    with pytest.raises(Unavailable):
        computing.ensure_dashboards(job, compute, [0], all_features=False)
    stored = jpb.ExportCheckpoint.FromString(job.checkpoint.SerializeToString())
    computing.release(compute, stored)
    assert compute.cancelled == [FIRST]


def test_a_new_attempt_names_its_own_computation(job: JobRuntime) -> None:
    failed = progress(ppb.JOB_STATE_FAILED)
    compute = Compute(Stream([failed], then=None), Stream([], then=Unavailable("gone")))
    with pytest.raises(Unavailable):
        computing.ensure_dashboards(job, compute, [0], all_features=False)
    assert job.checkpoint.compute.computation_id == ""  # the failed one is not cancelled
    with pytest.raises(Unavailable):
        computing.ensure_dashboards(job, compute, [0], all_features=False)
    assert job.checkpoint.compute.computation_id == computation_id_for("job/dashboards/1")


def test_cancelling_an_export_cancels_the_computation_its_saved_checkpoint_names(
    job: JobRuntime,
) -> None:
    """What an instance that adopts a crashed holder's job, asked to cancel it, is left with:
    the stored checkpoint, and a computation still running in the compute service."""
    compute = Compute(Stream([progress(ppb.JOB_STATE_RUNNING)], then=Unavailable("gone")))
    with pytest.raises(Unavailable):
        computing.ensure_dashboards(job, compute, [0], all_features=False)
    stored = jpb.ExportCheckpoint.FromString(job.checkpoint.SerializeToString())
    computing.release(compute, stored)
    assert compute.cancelled == [FIRST]


def test_a_finished_computation_is_no_longer_named_and_never_cancelled(job: JobRuntime) -> None:
    compute = Compute(Stream([progress(ppb.JOB_STATE_RUNNING), succeeded()], then=None))
    computing.ensure_dashboards(job, compute, [0], all_features=False)
    computing.release(compute, job.checkpoint)
    assert job.checkpoint.compute.computation_id == "" and compute.cancelled == []


def test_a_resume_asking_for_other_features_cancels_its_attempt_and_starts_a_new_one(
    job: JobRuntime,
) -> None:
    """Labels edited while the export was paused change the features it asks for: compute
    refuses the attempt's request id for the new request, so the export cancels that
    computation and asks for the new features under a new attempt."""
    refused = AlreadyExists("request_id was used for another request", field="request.request_id")
    compute = Compute(Stream([], then=refused), Stream([succeeded()], then=None))
    result = computing.ensure_dashboards(job, compute, [0, 2], all_features=False)
    assert result.features_computed == 4
    assert [r.request_id for r in compute.requests] == ["job/dashboards/0", "job/dashboards/1"]
    assert compute.requests[-1].feature_indices == (0, 2)
    assert compute.cancelled == [FIRST]
    assert job.checkpoint.compute.attempt == 1
