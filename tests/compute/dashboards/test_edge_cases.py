"""Dead and rare features, special tokens, and arguments that must be refused."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from mistudio_common.dashboard import DashboardParams, FeatureDashboard
from mistudio_common.dashboard_codec import dashboard_from_pb
from mistudio_common.errors import InvalidArgument
from mistudio_compute.dashboards import ArrayTokenSource, compute_dashboards

from tests.compute.dashboards import tiny

PARAMS = DashboardParams(n_quantile_groups=3, examples_per_quantile_group=2, context_left=5,
                         context_right=2)  # fmt: skip


@pytest.fixture(scope="module")
def inputs(model, relu_sae, tokens):
    return tiny.make_inputs(model, relu_sae, tokens)


def dashboards(inputs, features=None, **kw) -> list[FeatureDashboard]:
    params = replace(PARAMS, **kw)
    return [dashboard_from_pb(d)
            for c in compute_dashboards(inputs, params, features=features, batch_size=16)
            for d in c]  # fmt: skip


def test_dead_feature_gets_empty_histogram_and_no_examples(inputs) -> None:
    (d,) = dashboards(inputs, features=[0])
    s = d.statistics
    assert s.dead_feature and s.nonzero_count == 0 and s.activation_frequency == 0.0
    assert (s.max_activation, s.mean_activation, s.std_activation) == (0.0, 0.0, 0.0)
    assert s.quantiles == {} and s.quantile_relative_error == 0.0
    h = d.activation_histogram
    assert (h.bin_edges, h.counts, h.nonzero_count) == ([], [], 0)
    assert h.total_count == s.token_count > 0
    assert d.top_examples == [] and d.quantile_groups == [] and d.top_tokens == []
    assert len(d.top_positive_logits) == PARAMS.logit_k  # the decoder still has a logit lens


def test_feature_firing_once_has_one_example_and_one_bin(inputs) -> None:
    (d,) = dashboards(inputs, features=[1])
    s = d.statistics
    assert s.nonzero_count == 1 and not s.dead_feature
    (ex,) = d.top_examples
    assert ex.max_value == s.max_activation == sum(v for v in ex.values if v > 0)
    assert set(s.quantiles.values()) == {s.max_activation} and s.quantile_relative_error == 0.0
    assert d.activation_histogram.bin_edges == [s.max_activation] * 2
    assert d.activation_histogram.counts == [1]
    (group,) = d.quantile_groups
    assert (group.bin_min, group.bin_max, group.bin_contains) == (ex.max_value, ex.max_value, 1.0)
    assert [(t.token_id, t.count) for t in d.top_tokens] == [(ex.token_ids[ex.max_token_index], 1)]


def test_special_tokens_are_excluded_but_shown_in_windows(inputs, tokens) -> None:
    got = dashboards(inputs)
    specials = {tiny.TinyText().token(i) for i in tiny.SPECIAL}
    shown = 0
    for d in got:
        assert d.statistics.token_count == int((~np.isin(tokens, list(tiny.SPECIAL))).sum())
        for ex in [*d.top_examples, *(e for g in d.quantile_groups for e in g.examples)]:
            assert ex.token_ids[ex.max_token_index] not in tiny.SPECIAL
            for tok, value in zip(ex.tokens, ex.values, strict=True):
                if tok in specials:
                    shown += 1
                    assert value == 0.0
        assert all(t.token not in specials for t in d.top_tokens)
    assert shown > 0  # BOS appears inside windows near the row start


def test_top_examples_never_overlap_within_a_row(inputs) -> None:
    w = PARAMS.context_left + PARAMS.context_right
    for d in dashboards(inputs):
        centres = [(e.source.row, e.source.offset + e.max_token_index) for e in d.top_examples]
        for i, (r1, t1) in enumerate(centres):
            assert all(r1 != r2 or abs(t1 - t2) > w for r2, t2 in centres[i + 1 :])
        values = [e.max_value for e in d.top_examples]
        assert values == sorted(values, reverse=True)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_top_examples", 19),
        ("n_top_examples", 101),
        ("logit_k", 9),
        ("logit_k", 51),
        ("histogram_bins", 19),
        ("histogram_bins", 101),
        ("context_left", -1),
        ("examples_per_quantile_group", 0),
    ],
)
def test_params_out_of_range_are_invalid_arguments_naming_the_field(
    inputs, field: str, value: int
) -> None:
    with pytest.raises(InvalidArgument) as err:
        overrides: dict[str, Any] = {field: value}
        compute_dashboards(inputs, replace(PARAMS, **overrides))
    assert err.value.field == field
    assert str(value) in err.value.message


def test_feature_index_out_of_range_is_refused(inputs) -> None:
    with pytest.raises(InvalidArgument) as err:
        compute_dashboards(inputs, PARAMS, features=[3, 96])
    assert err.value.field == "feature_indices"


def test_batch_size_must_be_positive(inputs) -> None:
    with pytest.raises(InvalidArgument) as err:
        compute_dashboards(inputs, PARAMS, batch_size=0)
    assert err.value.field == "batch_size"


def test_token_array_must_be_two_dimensional_integers(inputs, tokens) -> None:
    for bad in (tokens[0], tokens.astype(np.float32)):
        broken = replace(inputs, source=ArrayTokenSource(bad, "tiny"))
        with pytest.raises(InvalidArgument) as err:
            next(compute_dashboards(broken, PARAMS))
        assert err.value.field == "tokens"


def test_one_quantile_group_holds_every_activation(inputs) -> None:
    for d in dashboards(inputs, features=[0, 1, 5], n_quantile_groups=1):
        if d.statistics.dead_feature:
            assert d.quantile_groups == []
            continue
        (group,) = d.quantile_groups
        assert group.bin_contains == 1.0
        assert group.bin_min == min(d.activation_histogram.bin_edges)
        assert group.bin_max == d.statistics.max_activation
        assert 1 <= len(group.examples) <= PARAMS.examples_per_quantile_group


class WrongWidth:
    """An encoder that claims more features than it returns."""

    def __init__(self, sae: tiny.ReluSAE) -> None:
        self.sae = sae
        self.d_sae = sae.d_sae + 1
        self.d_in = sae.d_in
        self.device = sae.device

    def encode(self, x):
        return self.sae.encode(x)

    def encode_features(self, x, features):
        return self.sae.encode_features(x, features)


def test_an_encoder_of_the_wrong_width_is_refused(inputs) -> None:
    with pytest.raises(InvalidArgument) as err:
        next(compute_dashboards(replace(inputs, encoder=WrongWidth(inputs.encoder)), PARAMS))
    assert err.value.field == "sae"
