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

import torch

from mistudio_compute.dashboards import grid as G
from mistudio_compute.dashboards import keys as K
from mistudio_compute.dashboards.state import PassState


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


def plan_examples(state: PassState, n_groups: int, per_group: int) -> ExamplePlan:
    top_pos = K.top_position(state.top_keys)  # [F, n_top]
    inner = _group_edges(state, n_groups)  # [F, n_groups - 1] grid indices or -1
    groups = G.binned(state.config.grid, state.hist, state.vmin, state.vmax, inner)
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


def _group_edges(state: PassState, n_groups: int) -> torch.Tensor:
    levels = tuple(k / n_groups for k in range(1, n_groups))
    if not levels:
        return torch.zeros((len(state.features), 0), dtype=torch.int64, device=state.hist.device)
    q, _ = G.quantiles(state.config.grid, state.hist, state.vmin, state.vmax, levels)
    return G.snap_to_grid(state.config.grid, q, state.vmin, state.vmax)


def _choose_quantile_examples(
    state: PassState, inner: torch.Tensor, n_groups: int, per_group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy, vectorised over features: positions and sample columns [F, n_groups * per_group]
    (-1 for empty slots)."""
    n_feat, dev = len(state.features), state.hist.device
    slots = max(n_groups, 1) * per_group
    out_pos = torch.full((n_feat, slots), -1, dtype=torch.int64, device=dev)
    out_src = torch.full((n_feat, slots), -1, dtype=torch.int64, device=dev)
    out_hash = torch.zeros((n_feat, slots), dtype=torch.int64, device=dev)
    if n_groups == 0:
        return out_pos[:, :0], out_src[:, :0]
    edges = state.config.grid.edges(dev)
    cut = torch.where(inner >= 0, edges[inner.clamp(min=0)], torch.inf)
    cut = _distinct(cut)  # [F, n_groups - 1] distinct inner edges, inf padded
    pos = K.sample_position(state.sample_keys)  # [F, S] priority order
    group = torch.searchsorted(cut, state.sample_values.contiguous(), right=True)  # [F, S]
    filled = torch.zeros((n_feat, n_groups), dtype=torch.int64, device=dev)
    rows = torch.arange(n_feat, device=dev)
    t, w = state.seq_len, state.config.window
    for s in range(pos.shape[1]):
        p, g, h = pos[:, s], group[:, s], state.sample_hash[:, s]
        taken = out_pos >= 0
        near = (out_pos // t == (p // t)[:, None]) & ((out_pos - p[:, None]).abs() <= w)
        clash = (taken & (near | (out_hash == h[:, None]))).any(1)
        n_in = filled[rows, g]
        ok = _where((p >= 0) & (n_in < per_group) & ~clash)
        slot = g[ok] * per_group + n_in[ok]
        out_pos[ok, slot], out_src[ok, slot] = p[ok], s
        out_hash[ok, slot] = h[ok]
        filled[ok, g[ok]] += 1
    return out_pos, out_src


def _distinct(x: torch.Tensor) -> torch.Tensor:
    """Rows sorted, repeated values replaced by inf and moved to the end."""
    x = x.sort(dim=1).values
    dup = torch.zeros_like(x, dtype=torch.bool)
    dup[:, 1:] = x[:, 1:] == x[:, :-1]
    return x.masked_fill(dup, torch.inf).sort(dim=1).values


def _where(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero().squeeze(1)


def example_rows(plan: ExamplePlan, seq_len: int) -> int:
    """How many token rows the chosen examples come from."""
    positions = plan.positions[plan.positions >= 0]
    return len(torch.unique(positions // seq_len))
