"""The parts of a PRD feature document that are not examples (statistics, histograms, logit
and top-token lists, quantile-group bins), rendered a batch at a time.

Each part's values are checked in bulk (type, finite, within float32) and rendered as JSON
fragments or float32 scalars, which orjson writes as they are: no walk over the document. A
part whose check fails is given as plain values instead, for ``jsonio.dumps`` to convert and,
where a value cannot be written, to name its JSON pointer.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson
from mistudio_common.dashboard import (
    FeatureDashboard,
    FeatureStatistics,
    Histogram,
)

from mistudio_export.formats import bulk_json, jsonio
from mistudio_export.formats.bulk_json import ListOf, StringTable


def _record(obj: Any, fields: Mapping[str, type]) -> dict[str, Any]:
    """One record's ``fields`` as plain values: what a part holds when it is not rendered in
    bulk (its keys and types are the bulk path's, ``_*_FIELDS``)."""
    return {name: getattr(obj, name) for name in fields}


def _histogram(h: Histogram, edges: Any = None) -> dict[str, Any]:
    """``edges``: the bin edges as written (float32, checked), else they are converted."""
    return {
        "bin_edges": list(h.bin_edges) if edges is None else edges,
        "counts": list(h.counts),
        "scale": h.scale.value,
        "total_count": h.total_count,
        "nonzero_count": h.nonzero_count,
    }


def _statistics(s: FeatureStatistics) -> dict[str, Any]:
    quantiles = [{"level": k, "value": v} for k, v in sorted(s.quantiles.items())]
    return {**_record(s, _STATISTICS_FIELDS), "quantiles": quantiles}


_BINS = operator.attrgetter("bin_min", "bin_max", "bin_contains")
_LOGIT_FIELDS = {"token": str, "token_id": int, "value": float, "rank": int}
_TOKEN_FIELDS = {
    "token": str, "token_id": int, "total_activation": float, "count": int,
    "mean_activation": float, "max_activation": float,
}  # fmt: skip
_STATISTICS_FIELDS = {
    "activation_frequency": float, "max_activation": float, "mean_activation": float,
    "std_activation": float, "l0_contribution": float, "dead_feature": bool,
    "quantile_relative_error": float, "token_count": int, "nonzero_count": int,
}  # fmt: skip
_QUANTILE_FIELDS = {"level": float, "value": float}
"""The per-record dicts' keys and types (those not rendered otherwise), for rendering a
batch's records in bulk."""


class _Quantile(NamedTuple):
    level: float
    value: float


@dataclass(frozen=True, slots=True)
class HeadParts:
    """Per dashboard of a batch, the parts of its document that are not examples: rendered in
    bulk (JSON fragments, float32 scalars), or (where a value needs the per-record path) as
    the plain values ``jsonio.dumps`` converts, and names where one cannot be written."""

    top_positive: list[Any]
    top_negative: list[Any]
    top_tokens: list[Any]
    histogram: list[Any]
    logit_histogram: list[Any]
    statistics: list[Any]
    group_bins: list[list[tuple[Any, Any, Any]]]
    """Per quantile group, its (bin_min, bin_max, bin_contains)."""
    rendered: bool
    """Every part was rendered in bulk: the documents hold nothing to convert."""


def head_parts(dashboards: Sequence[FeatureDashboard], strings: StringTable) -> HeadParts:
    """Each part checked and rendered for the whole batch at once where it can be."""

    def part(rendered: list[Any] | None, one: Callable[[FeatureDashboard], Any]) -> list[Any]:
        bulk.append(rendered is not None)
        return rendered if rendered is not None else list(map(one, dashboards))

    def lists(name: str, fields: dict[str, type]) -> list[Any]:
        groups = list(map(operator.attrgetter(name), dashboards))
        return part(
            bulk_json.record_lists(groups, fields, strings),
            lambda d: [_record(x, fields) for x in getattr(d, name)],
        )

    bulk: list[bool] = []
    return HeadParts(
        top_positive=lists("top_positive_logits", _LOGIT_FIELDS),
        top_negative=lists("top_negative_logits", _LOGIT_FIELDS),
        top_tokens=lists("top_tokens", _TOKEN_FIELDS),
        histogram=part(
            _histograms([d.activation_histogram for d in dashboards]),
            lambda d: _histogram(d.activation_histogram),
        ),
        logit_histogram=part(
            _histograms([d.logit_histogram for d in dashboards]),
            lambda d: _histogram(d.logit_histogram),
        ),
        statistics=part(
            _statistics_rows([d.statistics for d in dashboards], strings),
            lambda d: _statistics(d.statistics),
        ),
        group_bins=part(_group_bins(dashboards), lambda d: list(map(_BINS, d.quantile_groups))),
        rendered=all(bulk),
    )


def _objects(template: bulk_json.Template, n: int) -> list[orjson.Fragment]:
    rendered = bulk_json.rows(template, n)
    return [orjson.Fragment(rendered.span(k, k + 1)) for k in range(n)]


def _histograms(hs: Sequence[Histogram]) -> list[dict[str, Any]] | None:
    """The histograms with their edges as float32 arrays, which orjson writes as they are."""
    edges = [h.bin_edges for h in hs]
    numbers = [h.counts for h in hs] + [[h.total_count, h.nonzero_count] for h in hs]
    if not set(map(type, itertools.chain(*edges))) <= {float} or not set(
        map(type, itertools.chain(*numbers))
    ) <= {int}:
        return None
    values = np.array(list(itertools.chain(*edges)), np.float64)
    if not (np.abs(values) < jsonio.F32_OVERFLOW).all():
        return None
    written = bulk_json.float32_column(values)
    bounds = itertools.pairwise([0, *itertools.accumulate(map(len, edges))])
    return [_histogram(h, written[a:b]) for h, (a, b) in zip(hs, bounds, strict=True)]


def _statistics_rows(
    stats: Sequence[FeatureStatistics], strings: StringTable
) -> list[orjson.Fragment] | None:
    fields = bulk_json.record_fields(stats, _STATISTICS_FIELDS, strings)
    quantiles = [list(map(_Quantile._make, sorted(s.quantiles.items()))) for s in stats]
    rows = bulk_json.record_items(quantiles, _QUANTILE_FIELDS, strings)
    if fields is None or rows is None:
        return None
    return _objects({**fields, "quantiles": ListOf(rows)}, len(stats))


def _group_bins(ds: Sequence[FeatureDashboard]) -> list[Any] | None:
    """Per dashboard, its groups' bins as float32 scalars (orjson writes them as they are)."""
    bins = [_BINS(g) for d in ds for g in d.quantile_groups]
    if not set(map(type, itertools.chain.from_iterable(bins))) <= {float}:
        return None
    values = np.array(bins, np.float64).reshape(-1, 3)
    if not (np.abs(values) < jsonio.F32_OVERFLOW).all():
        return None
    scalars = list(map(tuple, bulk_json.float32_column(values)))
    ends = itertools.accumulate(len(d.quantile_groups) for d in ds)
    return [scalars[end - len(d.quantile_groups) : end] for d, end in zip(ds, ends, strict=True)]
