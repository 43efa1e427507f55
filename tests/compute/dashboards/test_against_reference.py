"""Every output of the streaming computation equals the dense brute-force reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from mistudio_common.dashboard import (
    QUANTILE_LEVELS,
    ActivationExample,
    BinScale,
    DashboardParams,
    FeatureDashboard,
    TokenRankMetric,
)
from mistudio_common.dashboard_codec import dashboard_from_pb
from mistudio_compute.dashboards import compute_dashboards
from mistudio_compute.dashboards.params import state_config

from tests.compute.dashboards import tiny
from tests.reference import dense_dashboards as ref

BATCH = 16
PARAMS = DashboardParams(
    n_top_examples=20,
    n_quantile_groups=4,
    examples_per_quantile_group=3,
    context_left=4,
    context_right=2,
    logit_k=10,
    histogram_bins=20,
    logit_histogram_bins=16,
    n_top_tokens=8,
)
VALUE_TOL = 1e-5  # second-pass windows are recomputed in other batches


def run(inputs, params: DashboardParams, features: list[int]) -> list[FeatureDashboard]:
    chunks = compute_dashboards(inputs, params, features=features, batch_size=BATCH, chunk_size=40)
    return [dashboard_from_pb(d) for chunk in chunks for d in chunk]


def check_example(got: ActivationExample, want: ref.RefExample, t_len: int) -> None:
    assert (got.source.row, got.source.offset) == (want.row, want.start)
    assert got.source.dataset == "tiny"
    assert got.token_ids == want.token_ids
    assert got.tokens == [tiny.TinyText().token(i) for i in want.token_ids]
    assert got.max_token_index == want.max_token_index
    assert got.max_value == max(got.values) == got.values[got.max_token_index]
    assert got.max_value == pytest.approx(want.max_value, abs=VALUE_TOL)
    np.testing.assert_allclose(got.values, want.values, atol=VALUE_TOL)
    centre = want.position % t_len - want.start
    assert got.qualifying_token_index == centre  # the sampled (or peak) token, not the max
    assert got.values[centre] == float(want.values[centre])  # qualifying token: pass-1 value


def check_feature(
    d: FeatureDashboard,
    r: ref.RefFeature,
    v: np.ndarray,
    tokens: np.ndarray,
    params: DashboardParams,
    logits: np.ndarray,
    pos_ids: list[int],
    neg_ids: list[int],
) -> None:
    s = d.statistics
    assert (s.nonzero_count, s.token_count) == (r.count, r.token_count)
    assert s.dead_feature == (r.count == 0)
    assert s.activation_frequency == pytest.approx(r.frequency, rel=1e-12)
    assert s.l0_contribution == s.activation_frequency
    assert s.max_activation == r.max
    assert s.mean_activation == pytest.approx(r.mean, rel=1e-9, abs=1e-12)
    assert s.std_activation == pytest.approx(r.std, rel=1e-6, abs=1e-9)
    assert s.quantiles.keys() == r.quantiles.keys()
    for q, exact in r.quantiles.items():
        assert abs(s.quantiles[q] - exact) <= s.quantile_relative_error * exact * (1 + 1e-9)

    # top examples, windows and all
    assert len(d.top_examples) == len(r.top)
    for got, want in zip(d.top_examples, r.top, strict=True):
        check_example(got, want, tokens.shape[1])

    # activation histogram: exact counts for the reported edges
    h = d.activation_histogram
    assert (h.total_count, h.nonzero_count, h.scale) == (r.token_count, r.count,
                                                          params.histogram_scale)  # fmt: skip
    if r.count == 0:
        assert h.bin_edges == [] and h.counts == []
    else:
        assert h.bin_edges[0] == r.active_values.min() and h.bin_edges[-1] == r.max
        assert 1 <= len(h.counts) <= params.histogram_bins
        assert h.counts == ref.histogram_counts(r.active_values, h.bin_edges)

    # quantile groups: exact bin_contains, and the reference's greedy pick within those edges
    groups = d.quantile_groups
    if r.count == 0:
        assert groups == []
    else:
        edges = [g.bin_min for g in reversed(groups)] + [groups[0].bin_max]
        assert edges[0] == r.active_values.min() and edges[-1] == r.max
        counts = ref.histogram_counts(r.active_values, edges)
        shares = [float(np.float32(c / r.count)) for c in counts]  # the contract's float field
        assert [g.bin_contains for g in reversed(groups)] == shares
        picks = ref.quantile_examples(r, tokens, v, edges, params.examples_per_quantile_group,
                                     params.context_left, params.context_right)  # fmt: skip
        for g, picked in zip(reversed(groups), picks, strict=True):
            picked = sorted(picked, key=lambda e: (-e.max_value, e.row, e.start))
            assert len(g.examples) == len(picked)
            for got_ex, want_ex in zip(g.examples, picked, strict=True):
                check_example(got_ex, want_ex, tokens.shape[1])
                sampled = got_ex.values[got_ex.qualifying_token_index]
                assert g.bin_min <= sampled <= g.bin_max and sampled <= got_ex.max_value

    # logit lens
    k = params.logit_k
    assert [e.token_id for e in d.top_positive_logits] == pos_ids[:k]
    assert [e.token_id for e in d.top_negative_logits] == neg_ids[:k]
    assert [e.rank for e in d.top_positive_logits] == list(range(1, k + 1))
    for e in [*d.top_positive_logits, *d.top_negative_logits]:
        assert e.value == pytest.approx(logits[e.token_id], abs=1e-4)
        assert e.token == tiny.TinyText().token(e.token_id)
    lh = d.logit_histogram
    assert len(lh.counts) == params.logit_histogram_bins and lh.total_count == len(logits)
    assert lh.bin_edges[0] == pytest.approx(logits.min(), abs=1e-4)
    assert lh.bin_edges[-1] == pytest.approx(logits.max(), abs=1e-4)
    below = np.cumsum(lh.counts)[:-1]  # values below each inner edge, within rounding
    for edge, n in zip(lh.bin_edges[1:-1], below, strict=True):
        assert (logits < edge - 1e-4).sum() <= n <= (logits < edge + 1e-4).sum()


def token_pairs(
    d: FeatureDashboard, r: ref.RefFeature, v: np.ndarray, tokens: np.ndarray, all_tokens: bool
) -> dict[tuple[int, int], tuple[int, float]]:
    """(row, t) -> (token id, value) of the positions the token table should cover."""
    t_len = tokens.shape[1]
    if all_tokens:
        rows, ts = np.nonzero(v > 0)
        return {
            (int(a), int(b)): (int(tokens[a, b]), float(v[a, b]))
            for a, b in zip(rows, ts, strict=True)
        }
    out = {}
    examples = [*d.top_examples, *(e for g in d.quantile_groups for e in g.examples)]
    for ex in examples:
        for k in range(len(ex.token_ids)):
            a, b = ex.source.row, ex.source.offset + k
            if v[a, b] > 0:
                out[(a, b)] = (int(tokens[a, b]), float(v[a, b]))
    assert len(out) <= len(examples) * (PARAMS.context_left + PARAMS.context_right + 1)
    del t_len
    return out


def check_token_table(d: FeatureDashboard, pairs: dict, params: DashboardParams) -> None:
    want = ref.token_table(pairs, tiny.TinyText().token, params.token_rank_metric.value,
                           params.n_top_tokens)  # fmt: skip
    got = d.top_tokens
    assert [(a.token, a.token_id, a.count) for a in got] == [(w[0], w[1], w[3]) for w in want]
    for a, w in zip(got, want, strict=True):
        assert a.total_activation == pytest.approx(w[2], abs=1e-4)
        assert a.mean_activation == pytest.approx(w[4], abs=1e-4)
        assert a.max_activation == pytest.approx(w[5], abs=1e-4)
    assert d.top_tokens_metric == params.token_rank_metric


def compare_all(
    model, sae, tokens: np.ndarray, params: DashboardParams, features: list[int] | None = None
) -> None:
    features = features or list(range(sae.d_sae))
    inputs = tiny.make_inputs(model, sae, tokens)
    got = run(inputs, params, features)
    acts = ref.masked(tiny.dense_activations(inputs, BATCH), tokens, sorted(tiny.SPECIAL))
    cfg = state_config(params, tiny.SPECIAL)
    w_dec = sae.w_dec.numpy()
    pos_ids, neg_ids, logits = ref.logit_lens(w_dec, model.W_U.detach().numpy(), params.logit_k)
    assert [d.feature_index for d in got] == features
    for f, d in zip(features, got, strict=True):
        v = acts[:, :, f]
        r = ref.reference_feature(v, tokens, sorted(tiny.SPECIAL), f, cfg.n_top, cfg.n_sample,
                                  params.context_left, params.context_right,
                                  QUANTILE_LEVELS)  # fmt: skip
        check_feature(d, r, v, tokens, params, logits[f], pos_ids[f], neg_ids[f])
        check_token_table(d, token_pairs(d, r, v, tokens, params.aggregate_all_tokens), params)


def test_relu_sae_matches_dense_reference(model, relu_sae, tokens) -> None:
    compare_all(model, relu_sae, tokens, PARAMS)


def test_topk_sae_matches_dense_reference(model, topk_sae, tokens) -> None:
    compare_all(model, topk_sae, tokens, PARAMS)


def test_linear_histograms_all_token_tables_and_count_ranking_match_reference(
    model,
    relu_sae,
    tokens,
) -> None:
    params = replace(
        PARAMS,
        histogram_scale=BinScale.LINEAR,
        aggregate_all_tokens=True,
        token_rank_metric=TokenRankMetric.COUNT,
        context_left=1,
        context_right=3,
        logit_k=12,
    )
    compare_all(model, relu_sae, tokens, params, features=list(range(0, relu_sae.d_sae, 3)))
