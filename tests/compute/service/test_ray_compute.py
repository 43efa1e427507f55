"""The compute service with a Ray address runs its pass as shards on that cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc

from tests.compute.service.conftest import (
    CONTEXT,
    D_SAE,
    ROWS,
    ComputeHarness,
    compute_request,
)
from tests.ray_cluster import local_ray_cluster

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def cluster():
    with local_ray_cluster():
        yield


def test_a_ray_address_computes_every_feature_through_shards(
    harness: ComputeHarness,
    store_stub: sgrpc.StoreServiceStub,
    registered_sae: str,
    token_file: Path,
) -> None:
    harness.settings = harness.settings.model_copy(update={"ray_address": "auto", "ray_shards": 3})
    compute = harness.start()
    messages = list(compute.ComputeDashboards(compute_request(registered_sae, token_file)))
    last = messages[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress
    assert last.result.features_computed == D_SAE
    passes = [
        s.items_done
        for m in messages
        for s in m.progress.stages
        if s.stage == ppb.STAGE_ACTIVATION_PASS
    ]
    assert passes == sorted(passes) and passes[-1] == ROWS * CONTEXT
    shard_tokens = ROWS // 3 * CONTEXT  # progress moves by whole shards, not by batches of 8 rows
    assert all(done % shard_tokens == 0 for done in passes)
    features = store_stub.ListFeatures(
        spb.ListFeaturesRequest(sae_id=registered_sae, page_size=100)
    )
    assert len(features.features) == D_SAE
