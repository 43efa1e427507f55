"""One feature's dashboard (GetFeatureDashboard) against in-memory peers: served from the cache,
refused or computed when it is missing."""

from __future__ import annotations

import pytest
from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mistudio_export.feature_dashboards import DashboardQuery, FeatureDashboards
from mistudio_export.peers import SaeRecord, TokenSource

from tests.export.stages.doubles import MemoryCompute, MemoryStore
from tests.store.helpers import make_dashboard

SAE = SaeRecord(sae_id="tiny", d_sae=4)
TOKENS = TokenSource(token_file="/data/tokens.npy")


def peers(cached: list[int]) -> tuple[FeatureDashboards, MemoryCompute]:
    compute = MemoryCompute()
    store = MemoryStore(SAE, [make_dashboard(i) for i in cached])
    return FeatureDashboards(store, compute), compute


def ask(index: int, *, compute: bool = False) -> DashboardQuery:
    return DashboardQuery(index, DashboardParams(), TOKENS, compute_if_missing=compute)


def test_a_cached_dashboard_is_served_without_computing() -> None:
    dashboards, compute = peers([0, 1, 2, 3])
    dashboard, from_cache = dashboards.get(SAE, ask(2))
    assert from_cache and dashboard.feature_index == 2
    assert compute.computations == []


def test_a_missing_dashboard_is_not_found_unless_computing_is_asked_for() -> None:
    dashboards, compute = peers([0, 1])
    with pytest.raises(NotFound):
        dashboards.get(SAE, ask(3))
    assert compute.computations == []


def test_a_computed_dashboard_that_never_reaches_the_cache_is_unavailable() -> None:
    dashboards, compute = peers([0, 1])  # this compute double caches nothing
    with pytest.raises(Unavailable, match="did not reach the cache"):
        dashboards.get(SAE, ask(3, compute=True))
    assert list(compute.computations[0].feature_indices) == [3]


def test_no_token_source_is_a_failed_precondition_naming_tokens() -> None:
    dashboards, compute = peers([0])
    with pytest.raises(FailedPrecondition) as err:
        dashboards.get(SAE, DashboardQuery(0, DashboardParams(), tokens=None))
    assert err.value.field == "tokens" and compute.computations == []


def test_an_index_outside_the_sae_names_feature_index() -> None:
    dashboards, _ = peers([0])
    with pytest.raises(InvalidArgument) as err:
        dashboards.get(SAE, ask(SAE.d_sae))
    assert err.value.field == "feature_index"
