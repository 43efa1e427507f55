"""The dashboard cache over gRPC: streamed writes, keyed reads, incremental updates."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.store.v1 import store_service_pb2 as pb
from mistudio.store.v1.store_service_pb2_grpc import StoreServiceStub
from mistudio_common.dashboard_codec import (
    content_hash,
    dashboard_bytes,
    params_from_pb,
    params_key,
)

from tests.store.helpers import (
    bad_request_fields,
    make_dashboard,
    make_sae,
    parsed,
    resource_info,
    serialized,
    small_dashboard,
)

PARAMS = dpb.DashboardParams(n_top_examples=20, logit_k=10, token_source_fingerprint="tiny:128")


@pytest.fixture
def sae_id(stub: StoreServiceStub) -> str:
    stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("cache", d_sae=8192)))
    return "cache"


def put(
    stub: StoreServiceStub,
    sae_id: str,
    indices: range | list[int],
    params: dpb.DashboardParams = PARAMS,
    scale: float = 1.0,
    batch: int = 256,
    make: Callable[[int, float], dpb.FeatureDashboard] = make_dashboard,
) -> pb.PutDashboardsResponse:
    """Streams the dashboards in batches; only the first message names SAE and params."""
    dashboards = [make(i, scale) for i in indices]
    messages = [
        pb.PutDashboardsRequest(
            serialized_dashboards=serialized(*dashboards[start : start + batch])
        )
        for start in range(0, len(dashboards), batch)
    ]
    messages[0].sae_id = sae_id
    messages[0].params.CopyFrom(params)
    return stub.PutDashboards(iter(messages))


def cached(
    stub: StoreServiceStub, sae_id: str, params: dpb.DashboardParams = PARAMS
) -> dict[int, str]:
    hashes: dict[int, str] = {}
    request = pb.ListCachedDashboardsRequest(sae_id=sae_id, params=params, page_size=50)
    while True:
        page = stub.ListCachedDashboards(request)
        hashes.update((d.feature_index, d.content_hash) for d in page.dashboards)
        if not page.next_page_token:
            return hashes
        request.page_token = page.next_page_token


def test_put_then_get_round_trips_in_request_order(stub: StoreServiceStub, sae_id: str) -> None:
    response = put(stub, sae_id, [4, 1, 9])
    assert response.written_count == 3
    assert response.params_key == params_key(params_from_pb(PARAMS))
    request = pb.GetDashboardsRequest(sae_id=sae_id, params=PARAMS, feature_indices=[9, 4, 1])
    messages = list(stub.GetDashboards(request))
    assert parsed(messages) == [make_dashboard(i) for i in (9, 4, 1)]
    assert list(messages[-1].missing) == []


EXAMPLE = dpb.ActivationExample(
    tokens=["a", "b"],
    token_ids=[7, 8],
    values=[0.0, 1.5],
    max_value=1.5,
    max_token_index=1,
    source=dpb.SourceRef(dataset="d", row=3, offset=-1),
)
TRICKY = [
    dpb.FeatureDashboard(feature_index=1),
    dpb.FeatureDashboard(feature_index=2, statistics=dpb.FeatureStatistics(mean_activation=-0.0)),
    dpb.FeatureDashboard(feature_index=3, activation_histogram=dpb.Histogram()),  # set, empty
    dpb.FeatureDashboard(feature_index=4, top_positive_logits=[dpb.LogitEntry(value=-0.0)]),
    dpb.FeatureDashboard(
        feature_index=5,
        top_examples=[EXAMPLE, dpb.ActivationExample(values=[-0.0], source=dpb.SourceRef())],
        quantile_groups=[dpb.QuantileGroup(bin_min=0.1, bin_max=0.3, examples=[EXAMPLE])],
        top_tokens_metric=dpb.TOKEN_RANK_METRIC_MEAN,
    ),
]


@pytest.mark.parametrize("dashboard", TRICKY, ids=lambda d: str(d.feature_index))
def test_a_cached_dashboard_reads_back_bit_identical_with_its_content_hash(
    stub: StoreServiceStub, sae_id: str, dashboard: dpb.FeatureDashboard
) -> None:
    put(stub, sae_id, [dashboard.feature_index], make=lambda i, _: dashboard)
    request = pb.GetDashboardsRequest(sae_id=sae_id, params=PARAMS)
    (again,) = [d for m in stub.GetDashboards(request) for d in m.serialized_dashboards]
    assert again.feature_index == dashboard.feature_index
    assert again.data == dashboard_bytes(dashboard)  # -0.0 and empty parts kept
    assert cached(stub, sae_id) == {dashboard.feature_index: content_hash(dashboard)}


def test_get_streams_batches_and_lists_missing_features_last(
    stub: StoreServiceStub, sae_id: str
) -> None:
    put(stub, sae_id, range(100))
    wanted = [*range(150), 150]  # 100 cached, 51 missing
    request = pb.GetDashboardsRequest(sae_id=sae_id, params=PARAMS, feature_indices=wanted)
    messages = list(stub.GetDashboards(request))
    assert [len(m.serialized_dashboards) for m in messages] == [64, 36]
    assert [d.feature_index for d in parsed(messages)] == list(range(100))
    assert list(messages[-1].missing) == list(range(100, 151))
    assert all(not m.missing for m in messages[:-1])


def test_get_without_indices_streams_every_cached_dashboard(
    stub: StoreServiceStub, sae_id: str
) -> None:
    put(stub, sae_id, range(70))
    messages = list(stub.GetDashboards(pb.GetDashboardsRequest(sae_id=sae_id, params=PARAMS)))
    assert [d.feature_index for d in parsed(messages)] == list(range(70))


def test_different_params_are_a_cache_miss(stub: StoreServiceStub, sae_id: str) -> None:
    put(stub, sae_id, [1, 2])
    other = dpb.DashboardParams()
    other.CopyFrom(PARAMS)
    other.logit_k = 20
    request = pb.GetDashboardsRequest(sae_id=sae_id, params=other, feature_indices=[1, 2])
    messages = list(stub.GetDashboards(request))
    assert len(messages) == 1 and not messages[0].serialized_dashboards
    assert list(messages[0].missing) == [1, 2]
    assert cached(stub, sae_id, other) == {}
    assert set(cached(stub, sae_id)) == {1, 2}


def test_unset_params_equal_their_defaults(stub: StoreServiceStub, sae_id: str) -> None:
    put(stub, sae_id, [3], params=dpb.DashboardParams())
    explicit = dpb.DashboardParams(n_top_examples=20, histogram_bins=50)
    assert set(cached(stub, sae_id, explicit)) == {3}


def test_rewriting_features_5000_to_5999_touches_only_those_rows(
    stub: StoreServiceStub, sae_id: str
) -> None:
    put(stub, sae_id, range(4990, 6010), make=small_dashboard)
    before = cached(stub, sae_id)

    response = put(stub, sae_id, range(5000, 6000), scale=2.0, make=small_dashboard)

    assert response.written_count == 1000
    after = cached(stub, sae_id)
    assert set(after) == set(before)
    changed = {i for i in after if after[i] != before[i]}
    assert changed == set(range(5000, 6000))
    assert after[5500] == content_hash(small_dashboard(5500, 2.0))


def test_feature_index_outside_the_sae_is_invalid_argument(
    stub: StoreServiceStub, sae_id: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        put(stub, sae_id, [0, 8192])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["serialized_dashboards[1].feature_index"]
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.GetDashboards(pb.GetDashboardsRequest(sae_id=sae_id, feature_indices=[-1])))
    assert bad_request_fields(caught.value) == ["feature_indices[0]"]


def test_a_stream_naming_a_second_sae_is_invalid_argument(
    stub: StoreServiceStub, sae_id: str
) -> None:
    messages = [
        pb.PutDashboardsRequest(
            sae_id=sae_id, params=PARAMS, serialized_dashboards=serialized(make_dashboard(1))
        ),
        pb.PutDashboardsRequest(
            sae_id="other", serialized_dashboards=serialized(make_dashboard(2))
        ),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.PutDashboards(iter(messages))
    assert bad_request_fields(caught.value) == ["sae_id"]
    # Batches are committed as they arrive: the first one is kept.
    assert set(cached(stub, sae_id)) == {1}


def test_dashboards_of_an_unknown_sae_are_not_found(stub: StoreServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.GetDashboards(pb.GetDashboardsRequest(sae_id="ghost", feature_indices=[1])))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert resource_info(caught.value).resource_name == "ghost"
    with pytest.raises(grpc.RpcError) as caught:
        put(stub, "ghost", [1])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListCachedDashboards(pb.ListCachedDashboardsRequest(sae_id="ghost"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_empty_stream_writes_nothing(stub: StoreServiceStub) -> None:
    response = stub.PutDashboards(iter([]))
    assert (response.written_count, response.params_key) == (0, "")
