"""A CancelComputation that comes before its computation's ComputeDashboards (an export instance
cancelled the job of one that crashed while asking, and the crashed one's start arrives late)
through a real compute server: the start ends CANCELLED without computing, also after a restart,
until the finished-job retention removes what the cancel left."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common.computations import computation_id_for

from tests.compute.service.conftest import D_SAE, ComputeHarness, compute_request

REQUEST_ID = "export-1/dashboards/0"
JOB_ID = computation_id_for(REQUEST_ID)


def cancel_unknown(compute: cgrpc.ComputeServiceStub) -> None:
    """The cancel tells its caller nothing was running (what the export's release expects)."""
    with pytest.raises(grpc.RpcError) as caught:
        compute.CancelComputation(cpb.CancelComputationRequest(job_id=JOB_ID), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def assert_ended_cancelled(stream: list[cpb.ComputeProgress]) -> None:
    assert len(stream) == 1
    progress = stream[0].progress
    assert progress.job_id == JOB_ID
    assert progress.state == ppb.JOB_STATE_CANCELLED
    assert progress.error.code == code_pb2.CANCELLED
    assert not stream[0].HasField("result")


def assert_nothing_computed(store_stub: sgrpc.StoreServiceStub, sae_id: str) -> None:
    features = store_stub.ListFeatures(spb.ListFeaturesRequest(sae_id=sae_id, page_size=100))
    assert not any(f.activation_frequency > 0 for f in features.features)


def test_a_start_after_a_cancel_of_its_id_ends_cancelled_and_computes_nothing(
    harness: ComputeHarness,
    compute: cgrpc.ComputeServiceStub,
    store_stub: sgrpc.StoreServiceStub,
    registered_sae: str,
    token_file: Path,
) -> None:
    cancel_unknown(compute)
    request = compute_request(registered_sae, token_file, REQUEST_ID)
    assert_ended_cancelled(list(compute.ComputeDashboards(request)))
    got = compute.GetComputation(cpb.GetComputationRequest(job_id=JOB_ID))
    assert got.computation.progress.state == ppb.JOB_STATE_CANCELLED
    reply = compute.CancelComputation(cpb.CancelComputationRequest(job_id=JOB_ID), timeout=10)
    assert reply.state == ppb.JOB_STATE_CANCELLED
    assert_ended_cancelled(list(compute.ComputeDashboards(request)))  # a retry sees the same
    assert_nothing_computed(store_stub, registered_sae)
    jobs = harness.settings.data_dir / "compute" / "jobs"
    assert not (jobs / JOB_ID / "checkpoint").exists()


def test_a_restarted_service_keeps_the_cancel(
    harness: ComputeHarness,
    compute: cgrpc.ComputeServiceStub,
    store_stub: sgrpc.StoreServiceStub,
    registered_sae: str,
    token_file: Path,
) -> None:
    cancel_unknown(compute)
    harness.stop()
    restarted = harness.start()
    request = compute_request(registered_sae, token_file, REQUEST_ID)
    assert_ended_cancelled(list(restarted.ComputeDashboards(request)))
    assert_nothing_computed(store_stub, registered_sae)


def test_retention_removes_the_cancel_and_a_later_start_computes(
    harness: ComputeHarness,
    compute: cgrpc.ComputeServiceStub,
    registered_sae: str,
    token_file: Path,
) -> None:
    cancel_unknown(compute)
    assert harness.server is not None
    manager = harness.server.manager
    retention = harness.settings.finished_job_retention_seconds
    assert manager.expire_finished(now=time.time()) == []
    assert manager.expire_finished(now=time.time() + retention + 1) == [JOB_ID]
    jobs = harness.settings.data_dir / "compute" / "jobs"
    assert list(jobs.iterdir()) == []
    request = compute_request(registered_sae, token_file, REQUEST_ID)
    last = list(compute.ComputeDashboards(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED
    assert last.result.features_computed == D_SAE
