"""Tiny real messages and plain records for the store tests, and readers for structured error
details."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.store.v1 import store_service_pb2 as pb
from mistudio_common.dashboard_codec import dashboard_bytes
from mistudio_store import records


def make_sae(sae_id: str = "tiny-sae", d_sae: int = 64, **fields: object) -> pb.Sae:
    config = struct_pb2.Struct()
    config.update({"k": 8, "normalize_activations": "none"})
    values: dict[str, object] = {
        "sae_id": sae_id,
        "model_id": "tiny-stories-1M",
        "hook_point": "blocks.0.hook_resid_post",
        "d_in": 16,
        "d_sae": d_sae,
        "architecture": pb.ARCHITECTURE_TOPK,
        "weights_uri": "file:///tmp/tiny-sae",
        "training_dataset": "roneneldan/TinyStories",
        "n_training_tokens": 1_000_000,
        "l0": 8.0,
        "explained_variance": 0.87,
        "neuronpedia_model_id": "tiny-stories-1m",
        "neuronpedia_source_set": "mistudio-res-64",
        "config": config,
        **fields,
    }
    return pb.Sae(**values)  # type: ignore[arg-type]


def sae_record(sae_id: str = "tiny-sae", d_sae: int = 64, **fields: object) -> records.Sae:
    """``make_sae``'s SAE as the repository takes it."""
    values: dict[str, object] = {
        "model_id": "tiny-stories-1M",
        "hook_point": "blocks.0.hook_resid_post",
        "d_in": 16,
        "d_sae": d_sae,
        "architecture": "topk",
        "weights_uri": "file:///tmp/tiny-sae",
        "config": {"k": 8, "normalize_activations": "none"},
        **fields,
    }
    return records.Sae(sae_id, **values)  # type: ignore[arg-type]


def make_dashboard(feature_index: int, scale: float = 1.0) -> dpb.FeatureDashboard:
    """A small but complete dashboard whose content depends on ``scale``."""
    example = dpb.ActivationExample(
        tokens=["Once", " upon", " a", " time"],
        token_ids=[7454, 2402, 257, 640],
        values=[0.0, 0.5 * scale, 2.0 * scale, 0.25],
        max_value=2.0 * scale,
        max_token_index=2,
        source=dpb.SourceRef(dataset="tiny", row=feature_index, offset=3),
    )
    return dpb.FeatureDashboard(
        feature_index=feature_index,
        top_examples=[example],
        quantile_groups=[
            dpb.QuantileGroup(bin_min=0.1, bin_max=2.0, bin_contains=1.0, examples=[example])
        ],
        top_positive_logits=[dpb.LogitEntry(token=" dog", token_id=3290, value=1.5, rank=1)],
        top_negative_logits=[dpb.LogitEntry(token=" cat", token_id=3797, value=-1.5, rank=1)],
        activation_histogram=dpb.Histogram(
            bin_edges=[0.0, 1.0, 2.0],
            counts=[3, 1],
            scale=dpb.BIN_SCALE_LINEAR,
            total_count=40,
            nonzero_count=4,
        ),
        statistics=dpb.FeatureStatistics(
            activation_frequency=0.1, max_activation=2.0 * scale, token_count=40, nonzero_count=4
        ),
        top_tokens_metric=dpb.TOKEN_RANK_METRIC_SUM,
    )


def small_dashboard(feature_index: int, scale: float = 1.0) -> dpb.FeatureDashboard:
    """The cheapest dashboard whose content depends on ``scale`` (for bulk tests)."""
    statistics = dpb.FeatureStatistics(max_activation=scale, token_count=40)
    return dpb.FeatureDashboard(feature_index=feature_index, statistics=statistics)


def serialized(*dashboards: dpb.FeatureDashboard) -> list[pb.SerializedDashboard]:
    """The dashboards as PutDashboards carries them: the bytes the store keeps."""
    return [
        pb.SerializedDashboard(feature_index=d.feature_index, data=dashboard_bytes(d))
        for d in dashboards
    ]


def stored(*dashboards: dpb.FeatureDashboard) -> list[records.SerializedDashboard]:
    """The dashboards as the repository takes them."""
    return [records.SerializedDashboard(d.feature_index, dashboard_bytes(d)) for d in dashboards]


def parsed(responses: Iterable[pb.GetDashboardsResponse]) -> list[dpb.FeatureDashboard]:
    """Every dashboard a GetDashboards stream carries, parsed, in order."""
    return [
        dpb.FeatureDashboard.FromString(d.data) for r in responses for d in r.serialized_dashboards
    ]


def status_of(error: grpc.RpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status details"
    return status


def bad_request_fields(error: grpc.RpcError) -> list[str]:
    """The field names of the BadRequest detail."""
    for detail in status_of(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return [v.field for v in bad_request.field_violations]
    raise AssertionError("no BadRequest detail")


def resource_info(error: grpc.RpcError) -> error_details_pb2.ResourceInfo:
    for detail in status_of(error).details:
        if detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ResourceInfo detail")
