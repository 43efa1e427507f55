"""From a finished pass state to FeatureDashboard messages, yielded in feature chunks.

Everything numeric runs per part of a chunk over all its features at once (statistics,
quantiles, histograms, logit lens, example windows, their sources and their order); the
per-feature loop only fills messages, each repeated field from a list cut out of one ``tolist``
per part, and the examples come as wire bytes (``example_wire``). A chunk's parts are built on
as many threads as torch uses, one torch thread each (``threads``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from itertools import chain, islice, pairwise

import numpy as np
import torch
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import QUANTILE_LEVELS, DashboardParams
from mistudio_common.dashboard_codec import METRIC_TO_PB, SCALE_TO_PB
from mistudio_common.dashboard_options import Component

from mistudio_compute.dashboards import grid as G
from mistudio_compute.dashboards import keys as K
from mistudio_compute.dashboards import wire as W
from mistudio_compute.dashboards.batching import check_cancelled
from mistudio_compute.dashboards.exact_sum import value_of
from mistudio_compute.dashboards.example_wire import ExampleBytes, GroupHeads
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
from mistudio_compute.dashboards.threads import default_threads, even_ranges, in_order
from mistudio_compute.dashboards.token_aggregation import TokenRows, per_token, rank_tokens

WIRE_FEATURES = 64
"""Features whose examples are written as wire bytes at once: enough that numpy's per-call cost
vanishes, few enough that the per-token index arrays stay a few MB (the memory model counts the
finished messages, not these)."""
_LEVEL_ORDER = sorted(range(len(QUANTILE_LEVELS)), key=lambda i: QUANTILE_LEVELS[i])


def finalize_dashboards(
    state: PassState,
    inputs: DashboardInputs,
    params: DashboardParams,
    *,
    chunk_size: int = 256,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> Iterator[list[dpb.FeatureDashboard]]:
    """Choose the examples (their windows come with the state), then dashboards ``chunk_size``
    features at a time. Each chunk is built in ``threads`` parts at once (default: every core
    torch uses on a CPU); a feature's message does not depend on its neighbours, so the chunks
    equal those one thread builds."""
    threads = default_threads(state.features.device) if threads is None else threads
    groups, per_group = quantile_groups(params), params.examples_per_quantile_group
    examples = bool(state.config.n_top or state.config.n_sample)
    if examples:  # choosing them is this stage's work (0.7 CPU-s at 16,384), not the pass's
        _report(progress, Stage.LOADING_EXAMPLES, 0, 0)
    plan = plan_examples(state, groups, per_group, threads)
    if examples:
        rows = example_rows(plan, state.seq_len)
        _report(progress, Stage.LOADING_EXAMPLES, rows, rows)
    if state.tokens is not None:
        state.tokens.compact()
    positions, windows = plan.positions.cpu().numpy(), plan.windows.cpu().numpy()
    builder = _Builder(state, inputs, params, plan, positions, windows)
    n = len(state.features)
    chunks = [(lo, min(n, lo + chunk_size)) for lo in range(0, n, chunk_size)]
    parts = [even_ranges(lo, hi, threads) for lo, hi in chunks]
    # at most one chunk's parts under way beside the chunk handed on: the memory plan's two
    with closing(in_order(builder.part, chain.from_iterable(parts), threads)) as built:
        for (_, hi), chunk_parts in zip(chunks, parts, strict=True):
            check_cancelled(cancel)
            _report_building(progress, params, hi, n)
            out = list(chain.from_iterable(islice(built, len(chunk_parts))))
            if params.includes(Component.TOKEN_AGGREGATION):
                _report(progress, Stage.TOKEN_AGGREGATION, hi, n)
            yield out


def _report_building(
    progress: ProgressCallback | None, params: DashboardParams, hi: int, n: int
) -> None:
    """A chunk's stages as it begins: its end is reported, so the chunks before it count."""
    if params.includes(Component.ACTIVATION_HISTOGRAM):
        _report(progress, Stage.HISTOGRAMS, hi, n)
    if params.includes(Component.LOGIT_LENS):
        _report(progress, Stage.LOGIT_LENS, hi, n)


@dataclass(slots=True)
class _Builder:
    state: PassState
    inputs: DashboardInputs
    params: DashboardParams
    plan: ExamplePlan
    positions: np.ndarray  # [F, E] int64 global positions of the chosen examples, -1 empty
    windows: np.ndarray  # [F, E, W] float32 activations around them

    def part(self, span: tuple[int, int]) -> list[dpb.FeatureDashboard]:
        """Dashboards of features [lo, hi) (on a worker thread: reports nothing)."""
        (lo, hi), s, p = span, self.state, self.params
        grid, vmin, vmax = s.config.grid, s.vmin[lo:hi], s.vmax[lo:hi]
        cum = s.hist[lo:hi].cumsum(1)  # [C, n_buckets]
        q, q_err = G.quantiles(grid, cum, vmin, vmax, QUANTILE_LEVELS)
        stats = self._statistics(lo, hi, q.cpu(), q_err.cpu())
        hists: list[tuple[list[float], list[int]]] = [([], []) for _ in range(lo, hi)]
        if p.includes(Component.ACTIVATION_HISTOGRAM):
            inner = G.snap_to_grid(grid, G.ideal_edges(vmin, vmax, p.histogram_bins,
                                                       p.histogram_scale), vmin, vmax)  # fmt: skip
            hists = G.binned(grid, cum, vmin, vmax, inner)
        logits = _LogitFields.left_out(hi - lo)
        if p.includes(Component.LOGIT_LENS):
            lens = logit_lens(self.inputs.logit_lens, s.features[lo:hi], p.logit_k,
                              p.logit_histogram_bins)  # fmt: skip
            logits = _LogitFields.of(lens, self.inputs.token_text.token)
        tokens = p.includes(Component.TOKEN_AGGREGATION)
        top_tokens = self._top_tokens(lo, hi) if tokens else W.PerFeature.empty(hi - lo)
        scale, metric = SCALE_TO_PB[p.histogram_scale], METRIC_TO_PB[p.token_rank_metric]
        out = []
        for i, index in enumerate(s.features[lo:hi].tolist()):
            edges, counts = hists[i]
            d = dpb.FeatureDashboard(
                feature_index=index,
                activation_histogram=dpb.Histogram(
                    bin_edges=edges,
                    counts=counts,
                    scale=scale,
                    total_count=s.token_count,
                    nonzero_count=stats[i].nonzero_count,
                ),
                logit_histogram=logits.histograms[i],
                statistics=stats[i],
                top_tokens_metric=metric,
            )
            d.MergeFromString(logits.entries.of(i) + top_tokens.of(i))
            out.append(d)
        for a in range(lo, hi, WIRE_FEATURES):
            b = min(hi, a + WIRE_FEATURES)
            self._add_examples(a, b, out[a - lo : b - lo])
        return out

    def _statistics(
        self, lo: int, hi: int, q: torch.Tensor, q_err: torch.Tensor
    ) -> list[dpb.FeatureStatistics]:
        s, tc = self.state, self.state.token_count
        cnt = s.count[lo:hi].cpu().numpy().astype(np.int64)
        alive = cnt > 0
        per = np.where(alive, cnt, 1).astype(np.float64)  # divisor; dead features give 0 below
        total = value_of(s.total[lo:hi]).cpu().numpy()
        total_sq = value_of(s.total_sq[lo:hi], squares=True).cpu().numpy()
        mean = np.where(alive, total / per, 0.0)
        var = total_sq / per - mean * mean
        std = np.where(alive, np.sqrt(np.where(var < 0, 0.0, var)), 0.0)
        freq = cnt / tc if tc else np.zeros(len(cnt))
        levels = [QUANTILE_LEVELS[j] for j in _LEVEL_ORDER]

        def shown(c: int, qs: list[float]) -> list[dpb.Quantile]:
            return (
                [dpb.Quantile(level=lv, value=v) for lv, v in zip(levels, qs, strict=True)]
                if c
                else []
            )

        quantiles = q[:, _LEVEL_ORDER].tolist()
        rows = zip(freq.tolist(), s.vmax[lo:hi].tolist(), mean.tolist(), std.tolist(),
                   cnt.tolist(), quantiles, q_err.tolist(), strict=True)  # fmt: skip
        return [
            dpb.FeatureStatistics(
                activation_frequency=fr,
                max_activation=mx,
                mean_activation=mn,
                std_activation=sd,
                l0_contribution=fr,
                dead_feature=c == 0,
                quantiles=shown(c, qs),
                quantile_relative_error=err,
                token_count=tc,
                nonzero_count=c,
            )
            for fr, mx, mn, sd, c, qs, err in rows
        ]

    def _add_examples(self, lo: int, hi: int, out: list[dpb.FeatureDashboard]) -> None:
        """Top examples and quantile groups of features lo..hi, in their shown order, merged
        into ``out`` as wire bytes built for the whole chunk at once (``wire``).

        Slot e of a feature is section 0 (top examples, kept in slot order) or quantile group g,
        shown as section 1 + (groups - 1 - g) (highest group first) with its examples by
        (max value desc, document, offset); the order is one lexsort over the chunk."""
        p, plan, t_len = self.params, self.plan, self.state.seq_len
        n_top, per = plan.n_top, plan.per_group
        groups = plan.groups[lo:hi]
        n_groups = np.array([len(counts) for _, counts in groups], dtype=np.int64)

        pos = self.positions[lo:hi]  # [C, E]
        slot = np.arange(pos.shape[1])
        g = np.where(slot < n_top, -1, (slot - n_top) // max(per, 1))  # [E], -1 for top slots
        section = np.where(g < 0, 0, n_groups[:, None] - g)  # [C, E]
        c, e = np.nonzero((pos >= 0) & ((g < 0) | (g < n_groups[:, None])))
        at, section = pos[c, e], section[c, e]
        row, t = at // t_len, at % t_len
        start = np.maximum(t - p.context_left, 0)  # first shown position of the row
        first = start - (t - p.context_left)  # its index in the full window
        length = np.minimum(t + p.context_right + 1, t_len) - start
        tt = (t[:, None] + np.arange(-p.context_left, p.context_right + 1)).clip(0, t_len - 1)
        ids = self.inputs.source.tokens[row[:, None], tt].astype(np.int64)  # [N, W]
        values = self.windows[lo + c, e]  # [N, W], 0 outside the row
        peak_at = values.argmax(1)  # the window's own maximum, not the qualifying token
        peak_value = values[np.arange(len(c)), peak_at]
        centre = t - start
        document, offset = self.inputs.source.locate(row, t)
        offset = offset - centre
        top = section == 0  # top examples keep their slot order
        descending = np.where(top, 0.0, -peak_value.astype(np.float64))
        order = np.lexsort((e, np.where(top, 0, offset), np.where(top, 0, document), descending,
                            section, c))  # fmt: skip
        c, section, first, m = c[order], section[order], first[order], length[order]
        ids, values = ids[order], values[order]
        shown = np.arange(ids.shape[1]) - first[:, None]  # [N, W] index among the shown tokens
        shown = (shown >= 0) & (shown < m[:, None])
        text, text_len = self.inputs.token_text.windows_utf8(ids[shown], m)
        examples = ExampleBytes(
            section, m, ids[shown], values[shown], text, text_len, peak_value[order],
            peak_at[order] - first, document[order], offset[order], centre[order],
            self.inputs.source.dataset.encode(),
        )  # fmt: skip
        heads = GroupHeads.of(groups)
        # every item of the chunk in its place: per feature its top examples, then per group
        # its head (key, length, bins) followed by its examples
        ex_size = examples.sizes()
        head_size = heads.sizes(c, section, ex_size)
        feature = np.concatenate([c, heads.feature])
        n, rank = len(c), np.arange(len(c) + len(heads.feature))
        is_head = rank >= n
        size = np.concatenate([ex_size, head_size])
        order = np.lexsort((rank, ~is_head, np.concatenate([section, heads.section]), feature))
        at = np.empty_like(size)
        at[order] = W.exclusive_cumsum(size[order])
        raw = np.zeros(int(size.sum()), np.uint8)
        examples.write(raw, at[:n])
        heads.write(raw, at[n:])
        ends = np.cumsum(np.bincount(feature, weights=size, minlength=len(out))).astype(np.int64)
        data, bounds = raw.tobytes(), [0, *ends.tolist()]
        for d, (a, b) in zip(out, pairwise(bounds), strict=True):
            d.MergeFromString(data[a:b])

    def _top_tokens(self, lo: int, hi: int) -> W.PerFeature:
        p, tracked = self.params, self.state.tokens
        rows = (
            self._example_tokens(lo, hi)
            if tracked is None
            else TokenRows.concatenate([_numpy(*tracked.rows(f)) for f in range(lo, hi)])
        )
        token = self.inputs.token_text.token
        return rank_tokens(rows, hi - lo, token, p.token_rank_metric, p.n_top_tokens)

    def _example_tokens(self, lo: int, hi: int) -> TokenRows:
        """``per_token`` over the distinct active positions inside each example window of
        features lo..hi, for the whole chunk at once."""
        p, t_len = self.params, self.state.seq_len
        c, e = np.nonzero(self.positions[lo:hi] >= 0)  # by feature, then slot
        centres, values = self.positions[lo + c, e], self.windows[lo + c, e]  # [N], [N, W]
        t = centres % t_len
        tt = t[:, None] + np.arange(-p.context_left, p.context_right + 1)  # [N, W]
        keep = (tt >= 0) & (tt < t_len) & (values > 0)
        where = (centres - t)[:, None] + tt  # global positions [N, W]
        feature = np.broadcast_to(c[:, None], tt.shape)[keep]
        uniq, first = np.unique(feature * K.MAX_POSITIONS + where[keep], return_index=True)
        at = uniq % K.MAX_POSITIONS
        tokens = self.inputs.source.tokens[at // t_len, at % t_len].astype(np.int64)
        return per_token(uniq // K.MAX_POSITIONS, tokens, values[keep][first])


def _numpy(*x: torch.Tensor) -> tuple[np.ndarray, ...]:
    return tuple(t.cpu().numpy() for t in x)


@dataclass(slots=True)
class _LogitFields:
    """The logit lens fields of a part's features: the entries as wire bytes, the histograms
    cut out of one ``tolist``."""

    entries: W.PerFeature  # top_positive_logits (highest first), top_negative_logits (lowest)
    histograms: list[dpb.Histogram]

    @classmethod
    def left_out(cls, n: int) -> _LogitFields:
        """No entries, no bins, nothing counted."""
        return cls(W.PerFeature.empty(n), [dpb.Histogram(scale=dpb.BIN_SCALE_LINEAR)] * n)

    @classmethod
    def of(cls, lens: LogitLens, token: Callable[[int], str]) -> _LogitFields:
        n, k = lens.pos_ids.shape
        ids = torch.cat([lens.pos_ids, lens.neg_ids], 1).numpy()  # [C, 2k] per feature in order
        distinct = np.unique(ids)
        text = dict(zip(distinct.tolist(), map(token, distinct.tolist()), strict=True))
        values = torch.cat([lens.pos_values, lens.neg_values], 1).numpy()
        rank = np.tile(np.arange(1, k + 1), 2 * n)
        fd, e = dpb.FeatureDashboard, dpb.LogitEntry
        sides = [fd.TOP_POSITIVE_LOGITS_FIELD_NUMBER, fd.TOP_NEGATIVE_LOGITS_FIELD_NUMBER]
        entries = W.records(
            np.tile(np.repeat(sides, k), n),
            [W.Column.text(e.TOKEN_FIELD_NUMBER, [text[t] for t in ids.ravel().tolist()]),
             W.Column(e.TOKEN_ID_FIELD_NUMBER, W.VARINT, ids.ravel()),
             W.Column(e.VALUE_FIELD_NUMBER, W.I32, values.ravel()),
             W.Column(e.RANK_FIELD_NUMBER, W.VARINT, rank)],
            np.repeat(np.arange(n), 2 * k), n,
        )  # fmt: skip
        rows = zip(lens.hist_edges.tolist(), lens.hist_counts.tolist(), lens.nonzero.tolist(),
                   strict=True)  # fmt: skip
        histograms = [
            dpb.Histogram(
                bin_edges=edges,
                counts=counts,
                scale=dpb.BIN_SCALE_LINEAR,
                total_count=sum(counts),
                nonzero_count=nonzero,
            )
            for edges, counts, nonzero in rows
        ]
        return cls(entries, histograms)


def _report(progress: ProgressCallback | None, stage: Stage, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total, "")
