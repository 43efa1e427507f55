"""Component switches: a part left out is not computed, has no progress stage, stays empty, and
leaves every other part exactly as a full computation makes it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from mistudio_common.dashboard import DashboardParams, FeatureDashboard
from mistudio_common.dashboard_codec import dashboard_from_pb
from mistudio_common.dashboard_options import COMPUTED_COMPONENTS, Component
from mistudio_common.errors import InvalidArgument
from mistudio_compute.dashboards import compute_dashboards, state_config
from mistudio_compute.dashboards.inputs import Stage

from tests.compute.dashboards import tiny

PARAMS = DashboardParams(n_quantile_groups=3, examples_per_quantile_group=2, context_left=4,
                         context_right=2, n_top_tokens=5, aggregate_all_tokens=True)  # fmt: skip
FEATURES = [1, 5, 17, 40]
STAGE_OF = {
    Component.LOGIT_LENS: Stage.LOGIT_LENS,
    Component.ACTIVATION_HISTOGRAM: Stage.HISTOGRAMS,
    Component.TOKEN_AGGREGATION: Stage.TOKEN_AGGREGATION,
}


class LensThatMustNotRun(tiny.DecoderLens):
    def directions(self, features):  # type: ignore[no-untyped-def]
        raise AssertionError("the logit lens ran although it was left out")


def run(inputs, params: DashboardParams) -> tuple[list[FeatureDashboard], set[Stage]]:
    stages: set[Stage] = set()
    chunks = compute_dashboards(inputs, params, features=FEATURES, batch_size=16,
                                progress=lambda stage, *_: stages.add(stage))  # fmt: skip
    return [dashboard_from_pb(d) for chunk in chunks for d in chunk], stages


@pytest.fixture(scope="module")
def inputs(model, relu_sae, tokens):
    return tiny.make_inputs(model, relu_sae, tokens)


@pytest.fixture(scope="module")
def full(inputs) -> list[FeatureDashboard]:
    return run(inputs, PARAMS)[0]


def without(d: FeatureDashboard, component: Component) -> dict[str, object]:
    """The dashboard's fields other than the component's own."""
    own = {
        Component.TOP_EXAMPLES: {"top_examples"},
        Component.QUANTILE_EXAMPLES: {"quantile_groups"},
        Component.LOGIT_LENS: {"top_positive_logits", "top_negative_logits", "logit_histogram"},
        Component.ACTIVATION_HISTOGRAM: {"activation_histogram"},
        Component.TOKEN_AGGREGATION: {"top_tokens"},
    }[component]
    return {name: getattr(d, name) for name in d.__slots__ if name not in own}  # type: ignore[attr-defined]


@pytest.mark.parametrize("component", COMPUTED_COMPONENTS, ids=lambda c: c.value)
def test_left_out_component_is_empty_and_the_rest_unchanged(inputs, full, component) -> None:
    dashboards, _ = run(inputs, replace(PARAMS, omitted=frozenset({component})))
    for d, reference in zip(dashboards, full, strict=True):
        assert without(d, component) == without(reference, component)
        if component is Component.TOP_EXAMPLES:
            assert d.top_examples == [] and reference.top_examples
        elif component is Component.QUANTILE_EXAMPLES:
            assert d.quantile_groups == []
        elif component is Component.LOGIT_LENS:
            assert d.top_positive_logits == d.top_negative_logits == []
            assert (d.logit_histogram.bin_edges, d.logit_histogram.total_count) == ([], 0)
        elif component is Component.ACTIVATION_HISTOGRAM:
            h = d.activation_histogram
            assert (h.bin_edges, h.counts) == ([], [])
            assert h.nonzero_count == d.statistics.nonzero_count  # statistics still computed
        else:
            assert d.top_tokens == [] and reference.top_tokens


@pytest.mark.parametrize("component", list(STAGE_OF), ids=lambda c: c.value)
def test_left_out_component_has_no_progress_stage(inputs, component) -> None:
    _, stages = run(inputs, replace(PARAMS, omitted=frozenset({component})))
    assert STAGE_OF[component] not in stages
    assert Stage.ACTIVATION_PASS in stages and Stage.LOADING_EXAMPLES in stages


def test_without_any_examples_nothing_is_loaded_or_kept(inputs) -> None:
    params = replace(PARAMS, omitted=frozenset({Component.TOP_EXAMPLES,
                                                Component.QUANTILE_EXAMPLES}))  # fmt: skip
    config = state_config(params, tiny.SPECIAL)
    assert (config.n_top, config.n_sample) == (0, 0)  # no example state in the pass
    dashboards, stages = run(inputs, params)
    assert Stage.LOADING_EXAMPLES not in stages
    assert all(d.top_examples == [] == d.quantile_groups for d in dashboards)
    assert any(d.statistics.nonzero_count for d in dashboards)


def test_token_aggregation_left_out_tracks_no_token_totals() -> None:
    params = replace(PARAMS, omitted=frozenset({Component.TOKEN_AGGREGATION}))
    assert not state_config(params, tiny.SPECIAL).track_tokens
    assert state_config(PARAMS, tiny.SPECIAL).track_tokens


def test_left_out_logit_lens_is_never_computed(inputs, relu_sae, model) -> None:
    silent = replace(inputs, logit_lens=LensThatMustNotRun(relu_sae, model))
    dashboards, _ = run(silent, replace(PARAMS, omitted=frozenset({Component.LOGIT_LENS})))
    assert len(dashboards) == len(FEATURES)
    with pytest.raises(AssertionError, match="ran although"):
        run(silent, PARAMS)


def test_explanations_cannot_be_left_out_of_a_computation(inputs) -> None:
    with pytest.raises(InvalidArgument) as err:
        run(inputs, replace(PARAMS, omitted=frozenset({Component.EXPLANATIONS})))
    assert err.value.field == "omitted_components"
