"""Brute-force dashboards from fully materialised activations, in plain numpy and loops.

This is the specification the streaming computation is tested against: every quantity is
computed the obvious way over the dense [rows, T, d_sae] activations. The only shared piece is
the sampling priority hash, re-implemented here from its definition (Mueller's 32-bit mix).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

M32 = 0xFFFFFFFF
_MIX = 0x45D9F3B
_SEED_SAMPLE = 0x2545F491


def mix32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.int64)
    x = (((x >> 16) ^ x) * _MIX) & M32
    x = (((x >> 16) ^ x) * _MIX) & M32
    return (x >> 16) ^ x


def sample_priority(feature: int, positions: np.ndarray) -> np.ndarray:
    """The bottom-k sort key of (feature, global position): hash priority, then position."""
    h = mix32(np.full_like(positions, feature) ^ _SEED_SAMPLE)
    h = mix32(h ^ (positions & M32))
    h = mix32(h ^ (positions >> 32))
    return ((h >> 1) << 32) | positions


@dataclass
class RefExample:
    position: int  # global qualifying position
    row: int
    start: int  # first window token in the row
    token_ids: list[int]
    values: list[float]
    max_value: float
    max_token_index: int


@dataclass
class RefFeature:
    count: int
    token_count: int
    frequency: float
    max: float
    mean: float
    std: float
    active_values: np.ndarray  # float32, positive activations
    quantiles: dict[float, float]
    top: list[RefExample]
    sample: list[tuple[int, float]] = field(default_factory=list)  # (position, value) by priority


def masked(acts: np.ndarray, tokens: np.ndarray, special: Sequence[int]) -> np.ndarray:
    """[rows, T, F] activations with special positions and negatives set to 0."""
    v = np.maximum(acts.astype(np.float32), 0)
    v[np.isin(tokens, list(special))] = 0
    return v


def window(tokens: np.ndarray, v: np.ndarray, pos: int, left: int, right: int) -> RefExample:
    """v: one feature's masked activations [rows, T]."""
    t_len = tokens.shape[1]
    row, t = divmod(pos, t_len)
    a, b = max(0, t - left), min(t_len, t + right + 1)
    values = [float(x) for x in v[row, a:b]]
    peak = values.index(max(values))  # the window's maximum, wherever the qualifying token is
    return RefExample(
        position=pos,
        row=row,
        start=a,
        token_ids=tokens[row, a:b].tolist(),
        values=values,
        max_value=values[peak],
        max_token_index=peak,
    )


def window_key(tokens: np.ndarray, pos: int, left: int, right: int) -> tuple[int, ...]:
    t_len = tokens.shape[1]
    row, t = divmod(pos, t_len)
    return tuple(
        int(tokens[row, u]) if 0 <= u < t_len else -1 for u in range(t - left, t + right + 1)
    )


def is_peak(v_row: np.ndarray, t: int, w: int) -> bool:
    """Largest within ±w in its row; ties go to the earliest position."""
    earlier = v_row[max(0, t - w) : t]
    later = v_row[t + 1 : t + w + 1]
    return bool((earlier < v_row[t]).all() and (later <= v_row[t]).all())


def reference_feature(
    v: np.ndarray,
    tokens: np.ndarray,
    special: Sequence[int],
    feature: int,
    n_top: int,
    n_sample: int,
    left: int,
    right: int,
    levels: Sequence[float],
) -> RefFeature:
    """v: the feature's masked activations [rows, T]."""
    t_len = tokens.shape[1]
    flat = v.reshape(-1)
    active = np.flatnonzero(flat > 0)
    token_count = int((~np.isin(tokens, list(special))).sum())
    vals = flat[active]
    order = sorted(active.tolist(), key=lambda p: (-flat[p], p))
    top: list[RefExample] = []
    seen: set[tuple[int, ...]] = set()
    for p in order:
        row, t = divmod(p, t_len)
        if not is_peak(v[row], t, left + right):
            continue
        key = window_key(tokens, p, left, right)
        if key in seen:
            continue
        seen.add(key)
        top.append(window(tokens, v, p, left, right))
        if len(top) == n_top:
            break
    prio = sample_priority(feature, active.astype(np.int64))
    sample = [(int(active[i]), float(flat[active[i]])) for i in np.argsort(prio)[:n_sample]]
    return RefFeature(
        count=len(active),
        token_count=token_count,
        frequency=len(active) / token_count,
        max=float(vals.max()) if len(vals) else 0.0,
        mean=float(vals.astype(np.float64).mean()) if len(vals) else 0.0,
        std=float(vals.astype(np.float64).std()) if len(vals) else 0.0,
        active_values=vals,
        quantiles={q: float(np.quantile(vals.astype(np.float64), q)) for q in levels}
        if len(vals)
        else {},
        top=top,
        sample=sample,
    )


def quantile_examples(
    ref: RefFeature,
    tokens: np.ndarray,
    v: np.ndarray,
    edges: Sequence[float],
    per_group: int,
    left: int,
    right: int,
) -> list[list[RefExample]]:
    """Given group edges [e0, ..., en] (bins [a, b), last closed), the greedy pick per group."""
    t_len, w = tokens.shape[1], left + right
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    chosen: list[int] = []
    keys: set[tuple[int, ...]] = set()
    groups: list[list[RefExample]] = [[] for _ in range(len(edges) - 1)]
    for pos, val in ref.sample:
        g = int(np.searchsorted(inner, val, side="right"))
        if len(groups[g]) == per_group:
            continue
        if any(c // t_len == pos // t_len and abs(c - pos) <= w for c in chosen):
            continue
        key = window_key(tokens, pos, left, right)
        if key in keys:
            continue
        chosen.append(pos)
        keys.add(key)
        groups[g].append(window(tokens, v, pos, left, right))
    return groups


def histogram_counts(values: np.ndarray, edges: Sequence[float]) -> list[int]:
    """Counts for bins [e_i, e_i+1) with the last bin closed."""
    e = np.asarray(edges, dtype=np.float64)
    idx = np.searchsorted(e[1:-1], values.astype(np.float64), side="right")
    return np.bincount(idx, minlength=len(e) - 1).tolist()


def logit_lens(
    directions: np.ndarray, w_u: np.ndarray, k: int
) -> tuple[list[list[int]], list[list[int]], np.ndarray]:
    """Top-k positive / negative token ids per feature (ties: lower id) and the logits."""
    logits = directions.astype(np.float64) @ w_u.astype(np.float64)
    ids = np.arange(logits.shape[1])
    pos = [np.lexsort((ids, -row))[:k].tolist() for row in logits]
    neg = [np.lexsort((ids, row))[:k].tolist() for row in logits]
    return pos, neg, logits


def token_table(
    pairs: dict[tuple[int, int], tuple[int, float]],
    token_string: Callable[[int], str],
    metric: str,
    n: int,
) -> list[tuple[str, int, float, int, float, float]]:
    """(string, lowest id, total, count, mean, max) per token string, ranked by ``metric``."""
    rows: dict[str, list[float]] = {}
    for tok, val in pairs.values():
        r = rows.setdefault(token_string(tok), [tok, 0.0, 0, 0.0])
        r[0] = min(r[0], tok)
        r[1] += val
        r[2] += 1
        r[3] = max(r[3], val)
    table = [(s, int(r[0]), r[1], int(r[2]), r[1] / r[2], r[3]) for s, r in rows.items()]
    col = {"sum": 2, "count": 3, "mean": 4}[metric]
    table.sort(key=lambda x: (-float(x[col]), x[1]))
    return table[:n]
