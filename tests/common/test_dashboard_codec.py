"""The store's JSON form of a dashboard: what it keeps and that it reads back bit-identical."""

from __future__ import annotations

import orjson
import pytest
from mistudio.common.v1 import dashboard_pb2 as pb
from mistudio_common.dashboard_codec import dashboard_from_json, dashboard_to_json

EXAMPLE = pb.ActivationExample(
    tokens=["a", "b"],
    token_ids=[7, 8],
    values=[0.0, 1.5],
    max_value=1.5,
    max_token_index=1,
    source=pb.SourceRef(dataset="d", row=3, offset=-1),
)
TRICKY = [
    pb.FeatureDashboard(),
    pb.FeatureDashboard(feature_index=4, statistics=pb.FeatureStatistics(mean_activation=-0.0)),
    pb.FeatureDashboard(activation_histogram=pb.Histogram()),  # set, though empty
    pb.FeatureDashboard(top_positive_logits=[pb.LogitEntry(value=-0.0)]),
    pb.FeatureDashboard(
        top_examples=[EXAMPLE, pb.ActivationExample(values=[-0.0], source=pb.SourceRef())],
        quantile_groups=[pb.QuantileGroup(bin_min=0.1, bin_max=0.3, examples=[EXAMPLE])],
        top_tokens_metric=pb.TOKEN_RANK_METRIC_MEAN,
    ),
]


@pytest.mark.parametrize("dashboard", TRICKY)
def test_the_json_form_reads_back_bit_identical(dashboard: pb.FeatureDashboard) -> None:
    stored = orjson.loads(orjson.dumps(dashboard_to_json(dashboard)))  # as the database keeps it
    again = dashboard_from_json(stored)
    assert again.SerializeToString(deterministic=True) == dashboard.SerializeToString(
        deterministic=True
    )


def test_fields_at_their_default_are_left_out_and_enums_are_named() -> None:
    data = dashboard_to_json(TRICKY[4])
    assert "feature_index" not in data and data["top_tokens_metric"] == "TOKEN_RANK_METRIC_MEAN"
    example = data["top_examples"][0]
    assert "qualifying_token_index" not in example
    assert example["values"] == [0.0, 1.5] and example["source"]["offset"] == -1
    assert data["top_examples"][1] == {"values": [-0.0], "source": {}}
    assert data["quantile_groups"][0]["bin_min"] == float(pb.QuantileGroup(bin_min=0.1).bin_min)
