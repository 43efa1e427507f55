"""One feature's dashboard (GetFeatureDashboard) against in-memory peers: served from the cache,
refused or computed when it is missing."""

from __future__ import annotations

import pytest
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.errors import NotFound, Unavailable
from mistudio_export.feature_dashboards import FeatureDashboards
from mistudio_export.peers import SaeRecord

from tests.export.stages.doubles import MemoryCompute, MemoryStore
from tests.store.helpers import make_dashboard

SAE = SaeRecord(sae_id="tiny", d_sae=4)
TOKENS = tpb.TokenSource(token_file="/data/tokens.npy")


def peers(cached: list[int]) -> tuple[FeatureDashboards, MemoryCompute]:
    compute = MemoryCompute()
    store = MemoryStore(SAE, [make_dashboard(i) for i in cached])
    return FeatureDashboards(store, compute), compute


def ask(index: int, *, compute: bool = False) -> epb.GetFeatureDashboardRequest:
    return epb.GetFeatureDashboardRequest(
        sae_id="tiny", feature_index=index, tokens=TOKENS, compute_if_missing=compute
    )


def test_a_cached_dashboard_is_served_without_computing() -> None:
    dashboards, compute = peers([0, 1, 2, 3])
    answer = dashboards.get(ask(2), SAE)
    assert answer.from_cache and answer.dashboard.feature_index == 2
    assert compute.computations == []


def test_a_missing_dashboard_is_not_found_unless_computing_is_asked_for() -> None:
    dashboards, compute = peers([0, 1])
    with pytest.raises(NotFound):
        dashboards.get(ask(3), SAE)
    assert compute.computations == []


def test_a_computed_dashboard_that_never_reaches_the_cache_is_unavailable() -> None:
    dashboards, compute = peers([0, 1])  # this compute double caches nothing
    with pytest.raises(Unavailable, match="did not reach the cache"):
        dashboards.get(ask(3, compute=True), SAE)
    assert list(compute.computations[0].feature_indices) == [3]
