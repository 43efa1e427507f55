"""Which tokens a feature fires on: totals per token string, ranked.

Tokens are grouped by their display string (ids that display alike are one row, shown with the
lowest such id). By default the rows cover the distinct positions of the feature's shown
examples where it is active; with ``aggregate_all_tokens`` they cover every active position of
the pass (``TokenTotals``). Ties in the ranking go to the lower token id.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import TokenRankMetric

TokenRows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""(ids, totals, counts, maxima) per distinct token id, ascending."""


def per_token(
    rows: np.ndarray, ids: np.ndarray, values: np.ndarray, n_rows: int
) -> list[TokenRows]:
    """Per row in [0, n_rows): (ids, totals, counts, maxima) per distinct id of its active
    (row, id, value) triples. Totals add a row's values in their given order."""
    span = int(ids.max()) + 1 if len(ids) else 1
    uniq, inv = np.unique(rows * span + ids, return_inverse=True)
    weights = values.astype(np.float64)
    totals = np.bincount(inv, weights=weights, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.int64)
    maxima = np.zeros(len(uniq), dtype=np.float64)
    np.maximum.at(maxima, inv, weights)
    row, token = uniq // span, uniq % span
    cuts = np.searchsorted(row, np.arange(n_rows + 1)).tolist()
    return [
        (token[a:b], totals[a:b], counts[a:b], maxima[a:b]) for a, b in itertools.pairwise(cuts)
    ]


def rank_tokens(
    ids: np.ndarray,
    totals: np.ndarray,
    counts: np.ndarray,
    maxima: np.ndarray,
    token_string: Callable[[int], str],
    metric: TokenRankMetric,
    n_top: int,
) -> list[dpb.TokenAggregate]:
    rows: dict[str, list[float]] = {}  # string -> [lowest id, total, count, max]
    for i, tot, cnt, mx in zip(ids.tolist(), totals.tolist(), counts.tolist(), maxima.tolist(),
                               strict=True):  # fmt: skip
        row = rows.setdefault(token_string(i), [i, 0.0, 0, 0.0])
        row[0], row[1], row[2], row[3] = min(row[0], i), row[1] + tot, row[2] + cnt, max(row[3], mx)
    key: Callable[[list[float]], float] = {
        TokenRankMetric.SUM: lambda r: float(r[1]),
        TokenRankMetric.COUNT: lambda r: float(r[2]),
        TokenRankMetric.MEAN: lambda r: float(r[1]) / int(r[2]),
    }[metric]
    ranked = sorted(((s, r) for s, r in rows.items() if r[2] > 0),
                    key=lambda sr: (-key(sr[1]), sr[1][0]))  # fmt: skip
    return [
        dpb.TokenAggregate(
            token=s,
            token_id=int(r[0]),
            total_activation=float(r[1]),
            count=int(r[2]),
            mean_activation=float(r[1]) / int(r[2]),
            max_activation=float(r[3]),
        )
        for s, r in ranked[:n_top]  # objects only for the rows shown
    ]
