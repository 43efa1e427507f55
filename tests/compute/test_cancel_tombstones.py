"""A cancel of a computation that has not started yet is remembered on compute's disk, so a start
that arrives after it (from an export instance that crashed while asking, whose job another
instance cancelled) ends CANCELLED without preparing or computing anything: the job manager on
a real data folder, with a preparer that only notes what it is asked."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from google.rpc import code_pb2
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.computations import computation_id_for
from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import AlreadyExists, FailedPrecondition, NotFound
from mistudio_common.stage_rates import JobSize
from mistudio_compute.config import ComputeSettings
from mistudio_compute.jobs import ComputeJobManager, PreparedComputation, RunHooks, RunStats
from mistudio_compute.values import ComputationRequest, StoredSae


class _Unrunnable:
    """A prepared computation that must never run."""

    sae_id, sae_owner, feature_indices = "", "", (0,)
    params = DashboardParams()

    def size(self, features: int) -> JobSize:
        return JobSize(tokens=0, features=features, example_tokens=0)

    def run(self, features: Sequence[int], hooks: RunHooks) -> RunStats:
        raise AssertionError("a cancelled computation ran")


class _NotingPreparer:
    """Notes each request it is asked to prepare; ``during`` runs while it prepares."""

    def __init__(self, during: Callable[[], None] | None = None) -> None:
        self.asked: list[ComputationRequest] = []
        self._during = during

    def prepare(self, request: ComputationRequest) -> PreparedComputation:
        self.asked.append(request)
        if self._during is None:
            raise FailedPrecondition("this test loads no model", fix="none: a test preparer")
        self._during()
        return _Unrunnable()


def _settings(data_dir: Path) -> ComputeSettings:
    return ComputeSettings(data_dir=data_dir)


@pytest.fixture
def make_manager(tmp_path: Path) -> Iterator[Callable[[_NotingPreparer], ComputeJobManager]]:
    """Managers on one data folder (a second one is the service restarted)."""
    made: list[ComputeJobManager] = []

    def make(preparer: _NotingPreparer) -> ComputeJobManager:
        made.append(ComputeJobManager(_settings(tmp_path), preparer, store=None))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for manager in made:
        manager.shutdown(wait_seconds=1.0)


REQUEST = ComputationRequest(sae=StoredSae("sae"), request_id="job/dashboards/0")
JOB_ID = computation_id_for(REQUEST.request_id)


def _cancel_unknown(manager: ComputeJobManager) -> None:
    with pytest.raises(NotFound):  # nothing was running
        manager.cancel(JOB_ID)


def _assert_ended_cancelled(manager: ComputeJobManager, job_id: str) -> None:
    latest = manager.channel(job_id).latest
    assert latest.progress.state == ppb.JOB_STATE_CANCELLED
    assert latest.progress.error.code == code_pb2.CANCELLED
    assert latest.outcome is None


def test_a_start_after_a_cancel_of_its_unknown_id_ends_cancelled_without_preparing(
    make_manager: Callable[[_NotingPreparer], ComputeJobManager],
) -> None:
    preparer = _NotingPreparer()
    manager = make_manager(preparer)
    _cancel_unknown(manager)
    assert manager.start(REQUEST) == JOB_ID
    _assert_ended_cancelled(manager, JOB_ID)
    assert preparer.asked == []
    assert not manager.records.checkpoint_dir(JOB_ID).exists()
    assert manager.start(REQUEST) == JOB_ID  # a repeated start finds the cancelled job
    assert manager.cancel(JOB_ID) == ppb.JOB_STATE_CANCELLED  # now there is a job to say so
    with pytest.raises(AlreadyExists):
        manager.start(ComputationRequest(sae=StoredSae("other"), request_id=REQUEST.request_id))
    assert preparer.asked == []


def test_a_cancel_that_arrives_while_the_start_prepares_ends_it_cancelled(
    make_manager: Callable[[_NotingPreparer], ComputeJobManager],
) -> None:
    managers: list[ComputeJobManager] = []
    preparer = _NotingPreparer(during=lambda: _cancel_unknown(managers[0]))
    managers.append(make_manager(preparer))
    assert managers[0].start(REQUEST) == JOB_ID
    _assert_ended_cancelled(managers[0], JOB_ID)
    assert len(preparer.asked) == 1


def test_the_tombstone_survives_a_restart(
    make_manager: Callable[[_NotingPreparer], ComputeJobManager],
) -> None:
    first = make_manager(_NotingPreparer())
    _cancel_unknown(first)
    first.shutdown(wait_seconds=1.0)
    preparer = _NotingPreparer()
    restarted = make_manager(preparer)
    restarted.resume_unfinished()
    restarted.start(REQUEST)
    _assert_ended_cancelled(restarted, JOB_ID)
    assert preparer.asked == []


def test_retention_removes_a_tombstone_past_the_finished_job_retention(
    make_manager: Callable[[_NotingPreparer], ComputeJobManager],
) -> None:
    preparer = _NotingPreparer()
    manager = make_manager(preparer)
    _cancel_unknown(manager)
    assert manager.expire_finished(now=time.time()) == []
    retention = _settings(Path()).finished_job_retention_seconds
    assert manager.expire_finished(now=time.time() + retention + 1) == [JOB_ID]
    assert list(manager.records.root.iterdir()) == []
    with pytest.raises(FailedPrecondition):  # a start now prepares (and would run) it
        manager.start(REQUEST)
    assert preparer.asked == [REQUEST]


def test_a_cancelled_start_is_removed_by_retention_like_any_finished_job(
    make_manager: Callable[[_NotingPreparer], ComputeJobManager],
) -> None:
    manager = make_manager(_NotingPreparer())
    _cancel_unknown(manager)
    manager.start(REQUEST)
    retention = _settings(Path()).finished_job_retention_seconds
    assert manager.expire_finished(now=time.time() + retention + 1) == [JOB_ID]
    assert list(manager.records.root.iterdir()) == []


def test_a_cancel_of_an_id_no_request_gives_leaves_nothing(
    make_manager: Callable[[_NotingPreparer], ComputeJobManager],
) -> None:
    manager = make_manager(_NotingPreparer())
    for job_id in ("../outside", "cmp-not-hex", JOB_ID + "0"):
        with pytest.raises(NotFound, match="no computation with job id"):
            manager.cancel(job_id)
    assert list(manager.records.root.iterdir()) == []
    assert not (manager.records.root.parent / "outside.cancelled").exists()
