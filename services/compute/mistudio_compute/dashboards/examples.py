"""Example selection after the pass, and the short second pass that fills context windows.

Quantile groups split a feature's positive activations at its quantiles (levels k / n), with
inner edges snapped to the fine grid so ``bin_contains`` is exact; each group's examples are
taken from the pass's uniform sample in priority order, skipping any whose window overlaps
(same row, within context_left + context_right) or equals one already taken. The token that
qualified an example (a top example's peak, a quantile example's sampled token) is its window's
centre; ``max_token_index``/``max_value`` always name the window's own maximum, which for a
quantile example may lie above its bin.

The second pass re-reads only the rows holding chosen examples. Window values are recomputed
there, except the qualifying token, which keeps the pass-1 value so ranking, bins and
statistics agree exactly; special tokens show 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mistudio_compute.dashboards import grid as G
from mistudio_compute.dashboards import keys as K
from mistudio_compute.dashboards.activation_pass import encode_rows, read_rows
from mistudio_compute.dashboards.batching import for_each_batch
from mistudio_compute.dashboards.inputs import (
    CancelCheck,
    DashboardInputs,
    ProgressCallback,
    Stage,
)
from mistudio_compute.dashboards.state import PassState


@dataclass(slots=True)
class ExamplePlan:
    """Chosen examples of every feature: slots [:, :n_top] are top examples, then quantile
    group g's slots are n_top + g * per_group + i."""

    positions: torch.Tensor  # [F, E] global positions, -1 for empty slots
    values: torch.Tensor  # [F, E] pass-1 value of the qualifying token
    n_top: int
    per_group: int
    groups: list[tuple[list[float], list[int]]]
    """Per feature: distinct group edges and counts (from ``grid.binned``)."""


def plan_examples(state: PassState, n_groups: int, per_group: int) -> ExamplePlan:
    top_pos = K.top_position(state.top_keys)  # [F, n_top]
    top_val = K.top_value(state.top_keys)
    inner = _group_edges(state, n_groups)  # [F, n_groups - 1] grid indices or -1
    groups = G.binned(state.config.grid, state.hist, state.vmin, state.vmax, inner)
    if n_groups == 0:
        groups = [([], [])] * len(groups)
    q_pos, q_val = _choose_quantile_examples(state, inner, n_groups, per_group)
    return ExamplePlan(
        positions=torch.cat([top_pos, q_pos], 1),
        values=torch.cat([top_val, q_val], 1),
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
    """Greedy, vectorised over features: (positions, values) [F, n_groups * per_group]."""
    n_feat, dev = len(state.features), state.hist.device
    slots = max(n_groups, 1) * per_group
    out_pos = torch.full((n_feat, slots), -1, dtype=torch.int64, device=dev)
    out_val = torch.zeros((n_feat, slots), dtype=torch.float32, device=dev)
    out_hash = torch.zeros((n_feat, slots), dtype=torch.int64, device=dev)
    if n_groups == 0:
        return out_pos[:, :0], out_val[:, :0]
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
        out_pos[ok, slot], out_val[ok, slot] = p[ok], state.sample_values[ok, s]
        out_hash[ok, slot] = h[ok]
        filled[ok, g[ok]] += 1
    return out_pos, out_val


def _distinct(x: torch.Tensor) -> torch.Tensor:
    """Rows sorted, repeated values replaced by inf and moved to the end."""
    x = x.sort(dim=1).values
    dup = torch.zeros_like(x, dtype=torch.bool)
    dup[:, 1:] = x[:, 1:] == x[:, :-1]
    return x.masked_fill(dup, torch.inf).sort(dim=1).values


def _where(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero().squeeze(1)


def load_windows(
    inputs: DashboardInputs,
    state: PassState,
    plan: ExamplePlan,
    left: int,
    right: int,
    *,
    batch_size: int,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """Activations around every chosen example: [F, E, left + 1 + right] float32 on the CPU
    (0 outside the row and at special tokens)."""
    t, dev = state.seq_len, inputs.encoder.device
    positions = plan.positions.cpu()
    n_feat, n_slots = positions.shape
    out = torch.zeros((n_feat, n_slots, left + 1 + right), dtype=torch.float32)
    fi, ei = _where_2d(positions >= 0)  # [X] chosen (feature, slot) pairs
    row = positions[fi, ei] // t
    order = row.argsort()
    fi, ei, row, col = fi[order], ei[order], row[order], positions[fi, ei][order] % t  # by row
    rows_needed = torch.unique(row)  # [R] sorted
    features = state.features.cpu()
    offsets = torch.arange(-left, right + 1)  # [W]
    special = torch.tensor(state.config.special_ids, dtype=torch.int64)

    def step(i: int, j: int) -> None:
        batch = read_rows(inputs.source.tokens, rows_needed[i:j].numpy(), dev)  # [b, T]
        acts = encode_rows(inputs, batch).view(j - i, t, -1)  # [b, T, d_sae]
        lo = int(torch.searchsorted(row, rows_needed[i]))
        hi = int(torch.searchsorted(row, rows_needed[j - 1], right=True))
        x = slice(lo, hi)  # the examples in these rows
        local = torch.searchsorted(rows_needed[i:j], row[x])[:, None]  # [x, 1] row in batch
        tt = col[x][:, None] + offsets  # [x, W] positions in the row
        tc = tt.clamp(0, t - 1)
        vals = acts[local.to(dev), tc.to(dev), features[fi[x]][:, None].to(dev)]  # [x, W]
        hidden = (tt < 0) | (tt >= t) | torch.isin(batch.cpu()[local, tc], special)
        out[fi[x], ei[x]] = vals.float().clamp(min=0).cpu().masked_fill(hidden, 0.0)

    for_each_batch(
        0,
        len(rows_needed),
        batch_size,
        step,
        stage=Stage.LOADING_EXAMPLES,
        progress=progress,
        cancel=cancel,
    )
    out[:, :, left] = plan.values.cpu()  # the qualifying token keeps its pass-1 value
    return out


def _where_2d(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx = mask.nonzero()
    return idx[:, 0], idx[:, 1]
