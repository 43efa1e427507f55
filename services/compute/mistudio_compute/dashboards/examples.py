"""Example selection after the pass, from the candidates (and windows) the pass state kept.

Quantile groups split a feature's positive activations at its quantiles (levels k / n), with
inner edges snapped to the fine grid so ``bin_contains`` is exact; each group's examples are
taken from the pass's uniform sample in priority order, skipping any whose window overlaps
(same row, within context_left + context_right) or equals one already taken. The token that
qualified an example (a top example's peak, a quantile example's sampled token) is its window's
centre; ``max_token_index``/``max_value`` always name the window's own maximum, which for a
quantile example may lie above its bin. Window values are the ones the pass saw (0 at special
tokens and outside the row), so no second model pass is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mistudio_compute.dashboards import grid as G
from mistudio_compute.dashboards import keys as K
from mistudio_compute.dashboards.state import PassState
from mistudio_compute.dashboards.threads import even_ranges, in_order


@dataclass(slots=True)
class ExamplePlan:
    """Chosen examples of every feature: slots [:, :n_top] are top examples, then quantile
    group g's slots are n_top + g * per_group + i."""

    positions: torch.Tensor  # [F, E] global positions, -1 for empty slots
    windows: torch.Tensor  # [F, E, left + 1 + right] float32 activations around them
    n_top: int
    per_group: int
    groups: list[tuple[list[float], list[int]]]
    """Per feature: distinct group edges and counts (from ``grid.binned``)."""

    @classmethod
    def concatenate(cls, parts: list[ExamplePlan]) -> ExamplePlan:
        """The plans of consecutive feature ranges as one (at least one part)."""
        return cls(
            positions=torch.cat([p.positions for p in parts]),
            windows=torch.cat([p.windows for p in parts]),
            n_top=parts[0].n_top,
            per_group=parts[0].per_group,
            groups=[g for p in parts for g in p.groups],
        )


def plan_examples(state: PassState, n_groups: int, per_group: int, threads: int = 1) -> ExamplePlan:
    """Every feature's plan depends on its own rows only, so it is made in ``threads``
    contiguous feature ranges at once (``threads.in_order``) and joined."""
    ranges = even_ranges(0, len(state.features), threads)
    if len(ranges) <= 1:
        return _plan(state, n_groups, per_group)
    parts = in_order(lambda part: _plan(part, n_groups, per_group), state.parts(ranges), threads)
    return ExamplePlan.concatenate(list(parts))


def _plan(state: PassState, n_groups: int, per_group: int) -> ExamplePlan:
    top_pos = K.top_position(state.top_keys)  # [F, n_top]
    cum = state.hist.cumsum(1)  # [F, n_buckets]
    inner = _group_edges(state, cum, n_groups)  # [F, n_groups - 1] grid indices or -1
    groups = G.binned(state.config.grid, cum, state.vmin, state.vmax, inner)
    if n_groups == 0:
        groups = [([], [])] * len(groups)
    q_pos, q_src = _choose_quantile_examples(state, inner, n_groups, per_group)
    width = state.sample_windows.shape[2]
    q_win = state.sample_windows.gather(1, q_src.clamp(min=0)[..., None].expand(-1, -1, width))
    return ExamplePlan(
        positions=torch.cat([top_pos, q_pos], 1),
        windows=torch.cat([state.top_windows, q_win.masked_fill_(q_pos[..., None] < 0, 0.0)], 1),
        n_top=state.config.n_top,
        per_group=per_group,
        groups=groups,
    )


def _group_edges(state: PassState, cum: torch.Tensor, n_groups: int) -> torch.Tensor:
    levels = tuple(k / n_groups for k in range(1, n_groups))
    if not levels:
        return torch.zeros((len(state.features), 0), dtype=torch.int64, device=state.hist.device)
    q, _ = G.quantiles(state.config.grid, cum, state.vmin, state.vmax, levels)
    return G.snap_to_grid(state.config.grid, q, state.vmin, state.vmax)


def _choose_quantile_examples(
    state: PassState, inner: torch.Tensor, n_groups: int, per_group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy, vectorised over features: positions and sample columns [F, n_groups * per_group]
    (-1 for empty slots). Samples are read in priority order, each feature's i-th checked
    only where it falls in a group with room left. In numpy: a hundred steps of small ops,
    which torch's intra-op threads make many times dearer on a busy CPU."""
    n_feat, dev = len(state.features), state.hist.device
    slots = max(n_groups, 1) * per_group
    out_pos = np.full((n_feat, slots), -1, dtype=np.int64)
    out_src = np.full((n_feat, slots), -1, dtype=np.int64)
    if n_groups == 0:
        return _on(out_pos[:, :0], dev), _on(out_src[:, :0], dev)
    out_row = np.full((n_feat, slots), -1, dtype=np.int64)  # -1: empty slot
    out_hash = np.full((n_feat, slots), -1, dtype=np.int64)  # window hashes are >= 0
    edges = state.config.grid.edges(dev)
    cut = torch.where(inner >= 0, edges[inner.clamp(min=0)], torch.inf)
    cut = _distinct(cut)  # [F, n_groups - 1] distinct inner edges, inf padded
    order = state.sample_order()  # [F, S] the sample's columns in priority order
    values = state.sample_values.gather(1, order)
    group = torch.searchsorted(cut, values, right=True).cpu().numpy()  # [F, S]
    pos = K.sample_position(state.sample_keys.gather(1, order)).cpu().numpy()
    hashes = state.sample_hash.gather(1, order).cpu().numpy()
    columns = order.cpu().numpy()
    filled = np.zeros((n_feat, n_groups), dtype=np.int64)
    t, w = state.seq_len, state.config.window
    for s in range(pos.shape[1]):
        p, g = pos[:, s], group[:, s]
        room = np.flatnonzero((p >= 0) & (filled[np.arange(n_feat), g] < per_group))  # [C]
        p, g, h = p[room], g[room], hashes[room, s]
        near = (out_row[room] == (p // t)[:, None]) & (np.abs(out_pos[room] - p[:, None]) <= w)
        ok = ~(near | (out_hash[room] == h[:, None])).any(1)
        f, p, g, h = room[ok], p[ok], g[ok], h[ok]
        slot = g * per_group + filled[f, g]
        out_pos[f, slot], out_src[f, slot] = p, columns[f, s]
        out_row[f, slot], out_hash[f, slot] = p // t, h
        filled[f, g] += 1
    return _on(out_pos, dev), _on(out_src, dev)


def _on(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(x).to(device)


def _distinct(x: torch.Tensor) -> torch.Tensor:
    """Rows sorted, repeated values replaced by inf and moved to the end."""
    x = x.sort(dim=1).values
    dup = torch.zeros_like(x, dtype=torch.bool)
    dup[:, 1:] = x[:, 1:] == x[:, :-1]
    return x.masked_fill(dup, torch.inf).sort(dim=1).values


def example_rows(plan: ExamplePlan, seq_len: int) -> int:
    """How many token rows the chosen examples come from (counted, not sorted: ``unique``
    sorts every position)."""
    rows = plan.positions[plan.positions >= 0] // seq_len
    return int(torch.count_nonzero(torch.bincount(rows)))
