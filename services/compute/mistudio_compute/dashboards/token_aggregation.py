"""Which tokens a feature fires on: totals per token string, ranked.

Tokens are grouped by their display string (ids that display alike are one row, shown with the
lowest such id). By default the rows cover the distinct positions of the feature's shown
examples where it is active; with ``aggregate_all_tokens`` they cover every active position of
the pass (``TokenTotals``). Ties in the ranking go to the lower token id. A chunk of features is
grouped and ranked at once, in numpy, and the rows shown are written as wire bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import TokenRankMetric

from mistudio_compute.dashboards import wire as W


@dataclass(frozen=True, slots=True)
class TokenRows:
    """Per (feature, token id) of a chunk, ascending by feature, then id."""

    feature: np.ndarray  # [R] int64 place in the chunk
    ids: np.ndarray  # [R] int64
    totals: np.ndarray  # [R] float64
    counts: np.ndarray  # [R] int64
    maxima: np.ndarray  # [R] float64

    @classmethod
    def concatenate(cls, per_feature: list[tuple[np.ndarray, ...]]) -> TokenRows:
        """From (ids, totals, counts, maxima) of each feature of the chunk, in order."""
        lengths = [len(ids) for ids, *_ in per_feature]
        feature = np.repeat(np.arange(len(per_feature), dtype=np.int64), lengths)
        if not per_feature:
            return cls(feature, *(np.zeros(0, dt) for dt in _DTYPES))
        columns = zip(*per_feature, strict=True)
        return cls(
            feature, *(np.concatenate(c).astype(t) for c, t in zip(columns, _DTYPES, strict=True))
        )


_DTYPES = (np.int64, np.float64, np.int64, np.float64)


def per_token(rows: np.ndarray, ids: np.ndarray, values: np.ndarray) -> TokenRows:
    """(ids, totals, counts, maxima) per distinct (row, id) of the active (row, id, value)
    triples. Totals add a row's values in their given order."""
    span = int(ids.max()) + 1 if len(ids) else 1
    uniq, inv = np.unique(rows * span + ids, return_inverse=True)
    weights = values.astype(np.float64)
    totals = np.bincount(inv, weights=weights, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.int64)
    maxima = np.zeros(len(uniq), dtype=np.float64)
    np.maximum.at(maxima, inv, weights)
    return TokenRows(uniq // span, uniq % span, totals, counts, maxima)


def rank_tokens(
    rows: TokenRows,
    n_features: int,
    token_string: Callable[[int], str],
    metric: TokenRankMetric,
    n_top: int,
) -> W.PerFeature:
    """The ``n_top`` token strings of each of the chunk's features, as ``top_tokens`` wire
    bytes. A string's total adds its ids' totals in ascending id order, as a running sum from
    0.0 would."""
    if len(rows.ids) == 0:
        return W.PerFeature.empty(n_features)
    distinct, id_at = np.unique(rows.ids, return_inverse=True)
    strings = [token_string(i) for i in distinct.tolist()]
    names, string_of = np.unique(np.array(strings, dtype=object), return_inverse=True)
    group = rows.feature * len(names) + string_of.reshape(-1)[id_at.reshape(-1)]  # [R]
    order = np.lexsort((rows.ids, group))  # each group's ids ascending, groups apart
    keys, first, inverse = np.unique(group[order], return_index=True, return_inverse=True)
    totals = np.bincount(inverse, weights=rows.totals[order], minlength=len(keys))
    counts = np.bincount(inverse, weights=rows.counts[order], minlength=len(keys))
    counts = counts.astype(np.int64)
    maxima = np.zeros(len(keys), dtype=np.float64)
    np.maximum.at(maxima, inverse, rows.maxima[order])
    shown_id = rows.ids[order][first]  # the lowest id of each group
    feature, name = keys // len(names), keys % len(names)
    live = counts > 0
    mean = np.divide(totals, counts, out=np.zeros_like(totals), where=live)
    score = {TokenRankMetric.SUM: totals, TokenRankMetric.COUNT: counts.astype(np.float64),
             TokenRankMetric.MEAN: mean}[metric]  # fmt: skip
    ranked = np.lexsort((shown_id, -score, feature))
    ranked = ranked[live[ranked]]
    starts = np.searchsorted(feature[ranked], np.arange(n_features + 1))
    place = np.arange(len(ranked)) - np.repeat(starts[:-1], np.diff(starts))
    kept = ranked[place < n_top]  # by feature, then rank
    t = dpb.TokenAggregate
    return W.records(
        np.full(len(kept), dpb.FeatureDashboard.TOP_TOKENS_FIELD_NUMBER),
        [W.Column.text(t.TOKEN_FIELD_NUMBER, names[name[kept]].tolist()),
         W.Column(t.TOKEN_ID_FIELD_NUMBER, W.VARINT, shown_id[kept]),
         W.Column(t.TOTAL_ACTIVATION_FIELD_NUMBER, W.I64, totals[kept]),
         W.Column(t.COUNT_FIELD_NUMBER, W.VARINT, counts[kept]),
         W.Column(t.MEAN_ACTIVATION_FIELD_NUMBER, W.I64, mean[kept]),
         W.Column(t.MAX_ACTIVATION_FIELD_NUMBER, W.I64, maxima[kept])],
        feature[kept], n_features,
    )  # fmt: skip
