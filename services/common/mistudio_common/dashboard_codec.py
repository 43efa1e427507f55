"""Conversions of the dashboard model: dataclasses <-> protobuf, wire form, cache keys, hashes.

The one place these mappings live, so compute (producer), store (cache) and export (consumer)
cannot drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from mistudio.common.v1 import dashboard_pb2 as pb

from mistudio_common import dashboard as d
from mistudio_common.dashboard_options import Component
from mistudio_common.errors import InvalidArgument

SCALE_TO_PB = {d.BinScale.LOG: pb.BIN_SCALE_LOG, d.BinScale.LINEAR: pb.BIN_SCALE_LINEAR}
SCALE_FROM_PB = {v: k for k, v in SCALE_TO_PB.items()}
METRIC_TO_PB = {
    d.TokenRankMetric.SUM: pb.TOKEN_RANK_METRIC_SUM,
    d.TokenRankMetric.COUNT: pb.TOKEN_RANK_METRIC_COUNT,
    d.TokenRankMetric.MEAN: pb.TOKEN_RANK_METRIC_MEAN,
}
METRIC_FROM_PB = {v: k for k, v in METRIC_TO_PB.items()}
COMPONENT_TO_PB = {
    Component.TOP_EXAMPLES: pb.DASHBOARD_COMPONENT_TOP_EXAMPLES,
    Component.QUANTILE_EXAMPLES: pb.DASHBOARD_COMPONENT_QUANTILE_EXAMPLES,
    Component.LOGIT_LENS: pb.DASHBOARD_COMPONENT_LOGIT_LENS,
    Component.ACTIVATION_HISTOGRAM: pb.DASHBOARD_COMPONENT_ACTIVATION_HISTOGRAM,
    Component.TOKEN_AGGREGATION: pb.DASHBOARD_COMPONENT_TOKEN_AGGREGATION,
    Component.EXPLANATIONS: pb.DASHBOARD_COMPONENT_EXPLANATIONS,
}
COMPONENT_FROM_PB = {v: k for k, v in COMPONENT_TO_PB.items()}


def check_components(values: Iterable[int], field: str) -> None:
    """Refuses an omitted component the contract does not define, naming ``field`` as the
    request spells it (``params_from_pb`` would drop it silently)."""
    for value in values:
        if value not in COMPONENT_FROM_PB:
            raise InvalidArgument(
                f"omitted component {value} is not a dashboard component",
                field=field,
                fix="use DASHBOARD_COMPONENT_TOP_EXAMPLES, _QUANTILE_EXAMPLES, _LOGIT_LENS, "
                "_ACTIVATION_HISTOGRAM, _TOKEN_AGGREGATION or _EXPLANATIONS",
            )


def _example_to_pb(e: d.ActivationExample) -> pb.ActivationExample:
    return pb.ActivationExample(
        tokens=e.tokens,
        token_ids=e.token_ids,
        values=e.values,
        max_value=e.max_value,
        max_token_index=e.max_token_index,
        source=pb.SourceRef(dataset=e.source.dataset, row=e.source.row, offset=e.source.offset),
        qualifying_token_index=e.qualifying_token_index,
    )


def _example_from_pb(m: pb.ActivationExample) -> d.ActivationExample:
    return d.ActivationExample(
        tokens=list(m.tokens),
        token_ids=list(m.token_ids),
        values=list(m.values),
        max_value=m.max_value,
        max_token_index=m.max_token_index,
        source=d.SourceRef(dataset=m.source.dataset, row=m.source.row, offset=m.source.offset),
        qualifying_token_index=m.qualifying_token_index,
    )


def _histogram_to_pb(h: d.Histogram) -> pb.Histogram:
    return pb.Histogram(
        bin_edges=h.bin_edges,
        counts=h.counts,
        scale=SCALE_TO_PB[h.scale],
        total_count=h.total_count,
        nonzero_count=h.nonzero_count,
    )


def _histogram_from_pb(m: pb.Histogram) -> d.Histogram:
    return d.Histogram(
        bin_edges=list(m.bin_edges),
        counts=list(m.counts),
        scale=SCALE_FROM_PB.get(m.scale, d.BinScale.LINEAR),
        total_count=m.total_count,
        nonzero_count=m.nonzero_count,
    )


def _logit_to_pb(e: d.LogitEntry) -> pb.LogitEntry:
    return pb.LogitEntry(token=e.token, token_id=e.token_id, value=e.value, rank=e.rank)


def _logit_from_pb(m: pb.LogitEntry) -> d.LogitEntry:
    return d.LogitEntry(token=m.token, token_id=m.token_id, value=m.value, rank=m.rank)


def _stats_to_pb(s: d.FeatureStatistics) -> pb.FeatureStatistics:
    return pb.FeatureStatistics(
        activation_frequency=s.activation_frequency,
        max_activation=s.max_activation,
        mean_activation=s.mean_activation,
        std_activation=s.std_activation,
        l0_contribution=s.l0_contribution,
        dead_feature=s.dead_feature,
        quantiles=[pb.Quantile(level=k, value=v) for k, v in sorted(s.quantiles.items())],
        quantile_relative_error=s.quantile_relative_error,
        token_count=s.token_count,
        nonzero_count=s.nonzero_count,
    )


def _stats_from_pb(m: pb.FeatureStatistics) -> d.FeatureStatistics:
    return d.FeatureStatistics(
        activation_frequency=m.activation_frequency,
        max_activation=m.max_activation,
        mean_activation=m.mean_activation,
        std_activation=m.std_activation,
        l0_contribution=m.l0_contribution,
        dead_feature=m.dead_feature,
        quantiles={q.level: q.value for q in m.quantiles},
        quantile_relative_error=m.quantile_relative_error,
        token_count=m.token_count,
        nonzero_count=m.nonzero_count,
    )


def _token_to_pb(t: d.TokenAggregate) -> pb.TokenAggregate:
    return pb.TokenAggregate(
        token=t.token,
        token_id=t.token_id,
        total_activation=t.total_activation,
        count=t.count,
        mean_activation=t.mean_activation,
        max_activation=t.max_activation,
    )


def _token_from_pb(m: pb.TokenAggregate) -> d.TokenAggregate:
    return d.TokenAggregate(
        token=m.token,
        token_id=m.token_id,
        total_activation=m.total_activation,
        count=m.count,
        mean_activation=m.mean_activation,
        max_activation=m.max_activation,
    )


def dashboard_to_pb(x: d.FeatureDashboard) -> pb.FeatureDashboard:
    return pb.FeatureDashboard(
        feature_index=x.feature_index,
        top_examples=[_example_to_pb(e) for e in x.top_examples],
        quantile_groups=[
            pb.QuantileGroup(
                bin_min=g.bin_min,
                bin_max=g.bin_max,
                bin_contains=g.bin_contains,
                examples=[_example_to_pb(e) for e in g.examples],
            )
            for g in x.quantile_groups
        ],
        top_positive_logits=[_logit_to_pb(e) for e in x.top_positive_logits],
        top_negative_logits=[_logit_to_pb(e) for e in x.top_negative_logits],
        activation_histogram=_histogram_to_pb(x.activation_histogram),
        logit_histogram=_histogram_to_pb(x.logit_histogram),
        statistics=_stats_to_pb(x.statistics),
        top_tokens=[_token_to_pb(t) for t in x.top_tokens],
        top_tokens_metric=METRIC_TO_PB[x.top_tokens_metric],
    )


def dashboard_from_pb(m: pb.FeatureDashboard) -> d.FeatureDashboard:
    return _dashboard_from_pb(
        m,
        [_example_from_pb(e) for e in m.top_examples],
        [[_example_from_pb(e) for e in g.examples] for g in m.quantile_groups],
    )


def dashboard_head_from_pb(
    m: pb.FeatureDashboard | pb.FeatureDashboardSplit,
) -> d.FeatureDashboard:
    """``dashboard_from_pb`` with every example list left empty, no example converted: for a
    reader that takes the examples from the message itself (the export's column batches decode
    them from a ``FeatureDashboardSplit``'s bytes)."""
    return _dashboard_from_pb(m, [], [[] for _ in m.quantile_groups])


def _dashboard_from_pb(
    m: pb.FeatureDashboard | pb.FeatureDashboardSplit,
    top_examples: list[d.ActivationExample],
    group_examples: list[list[d.ActivationExample]],
) -> d.FeatureDashboard:
    groups: Sequence[pb.QuantileGroup | pb.QuantileGroupSplit] = m.quantile_groups
    return d.FeatureDashboard(
        feature_index=m.feature_index,
        top_examples=top_examples,
        quantile_groups=[
            d.QuantileGroup(
                bin_min=g.bin_min,
                bin_max=g.bin_max,
                bin_contains=g.bin_contains,
                examples=examples,
            )
            for g, examples in zip(groups, group_examples, strict=True)
        ],
        top_positive_logits=[_logit_from_pb(e) for e in m.top_positive_logits],
        top_negative_logits=[_logit_from_pb(e) for e in m.top_negative_logits],
        activation_histogram=_histogram_from_pb(m.activation_histogram),
        logit_histogram=_histogram_from_pb(m.logit_histogram),
        statistics=_stats_from_pb(m.statistics),
        top_tokens=[_token_from_pb(t) for t in m.top_tokens],
        top_tokens_metric=METRIC_FROM_PB.get(m.top_tokens_metric, d.TokenRankMetric.SUM),
    )


def params_to_pb(p: d.DashboardParams) -> pb.DashboardParams:
    return pb.DashboardParams(
        n_top_examples=p.n_top_examples,
        n_quantile_groups=p.n_quantile_groups,
        examples_per_quantile_group=p.examples_per_quantile_group,
        context_left=p.context_left,
        context_right=p.context_right,
        logit_k=p.logit_k,
        histogram_bins=p.histogram_bins,
        histogram_scale=SCALE_TO_PB[p.histogram_scale],
        logit_histogram_bins=p.logit_histogram_bins,
        token_rank_metric=METRIC_TO_PB[p.token_rank_metric],
        n_top_tokens=p.n_top_tokens,
        aggregate_all_tokens=p.aggregate_all_tokens,
        token_source_fingerprint=p.token_source_fingerprint,
        computation_version=p.computation_version,
        omitted_components=sorted(COMPONENT_TO_PB[c] for c in p.omitted),
    )


def params_from_pb(m: pb.DashboardParams) -> d.DashboardParams:
    """Unset (zero) fields take the defaults, so a client may send only what it changes."""
    defaults = d.DashboardParams()
    return d.DashboardParams(
        n_top_examples=m.n_top_examples or defaults.n_top_examples,
        n_quantile_groups=m.n_quantile_groups or defaults.n_quantile_groups,
        examples_per_quantile_group=m.examples_per_quantile_group
        or defaults.examples_per_quantile_group,
        context_left=m.context_left or defaults.context_left,
        context_right=m.context_right or defaults.context_right,
        logit_k=m.logit_k or defaults.logit_k,
        histogram_bins=m.histogram_bins or defaults.histogram_bins,
        histogram_scale=SCALE_FROM_PB.get(m.histogram_scale, defaults.histogram_scale),
        logit_histogram_bins=m.logit_histogram_bins or defaults.logit_histogram_bins,
        token_rank_metric=METRIC_FROM_PB.get(m.token_rank_metric, defaults.token_rank_metric),
        n_top_tokens=m.n_top_tokens or defaults.n_top_tokens,
        aggregate_all_tokens=m.aggregate_all_tokens,
        token_source_fingerprint=m.token_source_fingerprint,
        computation_version=m.computation_version or defaults.computation_version,
        omitted=frozenset(
            COMPONENT_FROM_PB[c] for c in m.omitted_components if c in COMPONENT_FROM_PB
        ),
    )


def params_key(p: d.DashboardParams) -> str:
    """Cache key: SHA-256 of the parameters' canonical JSON."""
    canonical: dict[str, Any] = {
        k: (v.value if isinstance(v, d.BinScale | d.TokenRankMetric) else v)
        for k, v in sorted(_fields_of(p).items())
        if k != "omitted"
    }
    if p.omitted:  # only when set, so keys of dashboards cached before the switches still hit
        canonical["omitted"] = sorted(c.value for c in p.omitted)
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _fields_of(p: d.DashboardParams) -> dict[str, Any]:
    return {name: getattr(p, name) for name in p.__dataclass_fields__}


def dashboard_bytes(m: pb.FeatureDashboard) -> bytes:
    """The deterministic wire form: what the store keeps and what ``content_hash`` covers."""
    return m.SerializeToString(deterministic=True)


def content_hash(m: pb.FeatureDashboard) -> str:
    """SHA-256 of the deterministic wire form: equal content, equal hash."""
    return content_hash_of(dashboard_bytes(m))


def content_hash_of(wire: bytes) -> str:
    """``content_hash`` of a dashboard already in its ``dashboard_bytes`` form."""
    return hashlib.sha256(wire).hexdigest()
