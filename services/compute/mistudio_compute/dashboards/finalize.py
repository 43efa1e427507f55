"""From a finished pass state to FeatureDashboard objects, yielded in feature chunks.

Vectorised work (quantiles, histogram edges, logit lens) runs per chunk; the per-feature loop
only builds output objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from mistudio_common.dashboard import (
    QUANTILE_LEVELS,
    ActivationExample,
    BinScale,
    DashboardParams,
    FeatureDashboard,
    FeatureStatistics,
    Histogram,
    LogitEntry,
    QuantileGroup,
    SourceRef,
    TokenAggregate,
)
from mistudio_common.dashboard_options import Component

from mistudio_compute.dashboards import grid as G
from mistudio_compute.dashboards.batching import check_cancelled
from mistudio_compute.dashboards.exact_sum import value_of
from mistudio_compute.dashboards.examples import ExamplePlan, example_rows, plan_examples
from mistudio_compute.dashboards.inputs import (
    CancelCheck,
    DashboardInputs,
    ProgressCallback,
    Stage,
)
from mistudio_compute.dashboards.logit_lens import LogitLens, logit_lens
from mistudio_compute.dashboards.params import quantile_groups
from mistudio_compute.dashboards.state import PassState
from mistudio_compute.dashboards.token_aggregation import per_token, rank_tokens


def finalize_dashboards(
    state: PassState,
    inputs: DashboardInputs,
    params: DashboardParams,
    *,
    chunk_size: int = 256,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> Iterator[list[FeatureDashboard]]:
    """Choose the examples (their windows come with the state), then dashboards ``chunk_size``
    features at a time."""
    plan = plan_examples(state, quantile_groups(params), params.examples_per_quantile_group)
    if state.config.n_top or state.config.n_sample:
        rows = example_rows(plan, state.seq_len)
        _report(progress, Stage.LOADING_EXAMPLES, rows, rows)
    if state.tokens is not None:
        state.tokens.compact()
    positions, windows = plan.positions.cpu().numpy(), plan.windows.cpu().numpy()
    builder = _Builder(state, inputs, params, plan, positions, windows)
    n = len(state.features)
    for lo in range(0, n, chunk_size):
        check_cancelled(cancel)
        yield builder.chunk(lo, min(n, lo + chunk_size), progress)


class _Window(NamedTuple):
    """One example's window, cut to its row: token ids and values from ``start``."""

    row: int
    start: int
    ids: list[int]
    values: list[float]
    peak: int
    centre: int
    """Index of the qualifying token (the window's centre) in ``ids``."""


@dataclass(slots=True)
class _Builder:
    state: PassState
    inputs: DashboardInputs
    params: DashboardParams
    plan: ExamplePlan
    positions: np.ndarray  # [F, E] int64 global positions of the chosen examples, -1 empty
    windows: np.ndarray  # [F, E, W] float32 activations around them

    def chunk(self, lo: int, hi: int, progress: ProgressCallback | None) -> list[FeatureDashboard]:
        s, p, n = self.state, self.params, len(self.state.features)
        grid, vmin, vmax, hist = s.config.grid, s.vmin[lo:hi], s.vmax[lo:hi], s.hist[lo:hi]
        q, q_err = G.quantiles(grid, hist, vmin, vmax, QUANTILE_LEVELS)
        stats = self._statistics(lo, hi, q.cpu(), q_err.cpu())
        hists: list[tuple[list[float], list[int]]] = [([], []) for _ in range(lo, hi)]
        if p.includes(Component.ACTIVATION_HISTOGRAM):
            inner = G.snap_to_grid(grid, G.ideal_edges(vmin, vmax, p.histogram_bins,
                                                       p.histogram_scale), vmin, vmax)  # fmt: skip
            hists = G.binned(grid, hist, vmin, vmax, inner)
            _report(progress, Stage.HISTOGRAMS, hi, n)
        lens = None
        if p.includes(Component.LOGIT_LENS):
            lens = logit_lens(self.inputs.logit_lens, s.features[lo:hi], p.logit_k,
                              p.logit_histogram_bins)  # fmt: skip
            _report(progress, Stage.LOGIT_LENS, hi, n)
        windows = self._windows(lo, hi)
        tokens = p.includes(Component.TOKEN_AGGREGATION)
        out = []
        for i, (f, index) in enumerate(zip(range(lo, hi), s.features[lo:hi].tolist(), strict=True)):
            top, groups = self._examples(f, windows[i])
            edges, counts = hists[i]
            out.append(
                FeatureDashboard(
                    feature_index=index,
                    top_examples=top,
                    quantile_groups=groups,
                    top_positive_logits=self._logits(lens, i, positive=True),
                    top_negative_logits=self._logits(lens, i, positive=False),
                    activation_histogram=Histogram(
                        bin_edges=edges,
                        counts=counts,
                        scale=p.histogram_scale,
                        total_count=s.token_count,
                        nonzero_count=stats[i].nonzero_count,
                    ),
                    logit_histogram=_logit_histogram(lens, i),
                    statistics=stats[i],
                    top_tokens=self._top_tokens(f) if tokens else [],
                    top_tokens_metric=p.token_rank_metric,
                )
            )
        if tokens:
            _report(progress, Stage.TOKEN_AGGREGATION, hi, n)
        return out

    def _statistics(
        self, lo: int, hi: int, q: torch.Tensor, q_err: torch.Tensor
    ) -> list[FeatureStatistics]:
        s, out = self.state, []
        tc = s.token_count
        total, total_sq = value_of(s.total[lo:hi]), value_of(s.total_sq[lo:hi], squares=True)
        cols = (s.count[lo:hi], total, total_sq, s.vmax[lo:hi])
        for i, (cnt, tot, sq, mx) in enumerate(zip(*(c.tolist() for c in cols), strict=True)):
            mean = tot / cnt if cnt else 0.0
            std = math.sqrt(max(sq / cnt - mean * mean, 0.0)) if cnt else 0.0
            freq = cnt / tc if tc else 0.0
            out.append(
                FeatureStatistics(
                    activation_frequency=freq,
                    max_activation=float(mx),
                    mean_activation=mean,
                    std_activation=std,
                    l0_contribution=freq,
                    dead_feature=cnt == 0,
                    quantiles=dict(zip(QUANTILE_LEVELS, q[i].tolist(), strict=True)) if cnt else {},
                    quantile_relative_error=float(q_err[i]),
                    token_count=tc,
                    nonzero_count=cnt,
                )
            )
        return out

    def _windows(self, lo: int, hi: int) -> list[list[_Window | None]]:
        """Every chosen example window of features lo..hi (array work done once per chunk):
        [feature][slot], None for an empty slot."""
        p, t_len, tokens = self.params, self.state.seq_len, self.inputs.source.tokens
        pos = self.positions[lo:hi]  # [C, E]
        row, t = pos // t_len, pos % t_len
        start = np.maximum(t - p.context_left, 0)  # first shown position of the row
        first = start - (t - p.context_left)  # its index in the full window
        length = np.minimum(t + p.context_right + 1, t_len) - start
        tt = (t[..., None] + np.arange(-p.context_left, p.context_right + 1)).clip(0, t_len - 1)
        ids = tokens[row.clip(min=0)[..., None], tt].astype(np.int64)  # [C, E, W]
        windows = self.windows[lo:hi]  # [C, E, W], 0 outside the row
        peak = windows.argmax(2) - first  # the window's own maximum, not the qualifying token
        centre = t - start
        cols = (pos, row, start, first, length, peak, centre, ids, windows)
        return [
            [
                None if at < 0 else _Window(r, a, ids_[j : j + m], vals[j : j + m], pk, c)
                for at, r, a, j, m, pk, c, ids_, vals in zip(*cols_f, strict=True)
            ]
            for cols_f in zip(*(c.tolist() for c in cols), strict=True)
        ]

    def _examples(
        self, f: int, windows: list[_Window | None]
    ) -> tuple[list[ActivationExample], list[QuantileGroup]]:
        plan, n_top, per = self.plan, self.plan.n_top, self.plan.per_group
        top = [self._example(w) for w in windows[:n_top] if w is not None]
        edges, counts = plan.groups[f]
        nnz, groups = sum(counts), []
        for g in reversed(range(len(counts))):
            slots = windows[n_top + g * per : n_top + (g + 1) * per]
            examples = [self._example(w) for w in slots if w is not None]
            examples.sort(key=lambda x: (-x.max_value, x.source.row, x.source.offset))
            groups.append(QuantileGroup(edges[g], edges[g + 1], counts[g] / nnz, examples))
        return top, groups

    def _example(self, w: _Window) -> ActivationExample:
        """The window is credited to the qualifying token's document (a row may pack several)."""
        document, offset = self.inputs.source.locate(w.row, w.start + w.centre)
        return ActivationExample(
            tokens=self.inputs.token_text.window(w.ids),
            token_ids=w.ids,
            values=w.values,
            max_value=w.values[w.peak],
            max_token_index=w.peak,
            source=SourceRef(self.inputs.source.dataset, document, offset - w.centre),
            qualifying_token_index=w.centre,
        )

    def _logits(self, lens: LogitLens | None, i: int, *, positive: bool) -> list[LogitEntry]:
        """Feature i's top (or bottom) logits; none when the logit lens is left out."""
        if lens is None:
            return []
        ids, values = (
            (lens.pos_ids, lens.pos_values) if positive else (lens.neg_ids, lens.neg_values)
        )
        text = self.inputs.token_text
        return [
            LogitEntry(token=text.token(t), token_id=t, value=v, rank=r + 1)
            for r, (t, v) in enumerate(zip(ids[i].tolist(), values[i].tolist(), strict=True))
        ]

    def _top_tokens(self, f: int) -> list[TokenAggregate]:
        p, text = self.params, self.inputs.token_text
        if self.state.tokens is not None:
            ids, totals, counts, maxima = (x.cpu().numpy() for x in self.state.tokens.rows(f))
        else:  # the distinct active positions inside the feature's example windows
            t_len, chosen = self.state.seq_len, self.positions[f] >= 0
            centres, values = self.positions[f][chosen], self.windows[f][chosen]  # [e], [e, W]
            t = centres % t_len
            tt = t[:, None] + np.arange(-p.context_left, p.context_right + 1)  # [e, W]
            keep = (tt >= 0) & (tt < t_len) & (values > 0)
            where = (centres - t)[:, None] + tt  # global positions [e, W]
            uniq, first = np.unique(where[keep], return_index=True)
            tokens = self.inputs.source.tokens[uniq // t_len, uniq % t_len].astype(np.int64)
            ids, totals, counts, maxima = per_token(tokens, values[keep][first])
        return rank_tokens(ids, totals, counts, maxima, text.token, p.token_rank_metric,
                           p.n_top_tokens)  # fmt: skip


def _logit_histogram(lens: LogitLens | None, i: int) -> Histogram:
    if lens is None:  # left out: no bins, nothing counted
        return Histogram(bin_edges=[], counts=[], scale=BinScale.LINEAR, total_count=0,
                         nonzero_count=0)  # fmt: skip
    counts = lens.hist_counts[i].tolist()
    return Histogram(
        bin_edges=lens.hist_edges[i].tolist(),
        counts=counts,
        scale=BinScale.LINEAR,
        total_count=sum(counts),
        nonzero_count=int(lens.nonzero[i]),
    )


def _report(progress: ProgressCallback | None, stage: Stage, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total, "")
