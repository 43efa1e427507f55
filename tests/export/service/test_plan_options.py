"""Dashboard options in the plan: one table of bounds for every service, presets, component
switches, hooks without a logit lens, and one set of defaults for the CLI and the contract."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_cli.main import build_parser
from mistudio_cli.options import export_config
from mistudio_common.dashboard import BinScale, DashboardParams
from mistudio_common.dashboard_codec import params_key
from mistudio_common.dashboard_options import (
    DEFAULT_PREPEND_BOS,
    PARAM_BOUNDS,
    Component,
    prepend_bos,
)
from mistudio_common.errors import InvalidArgument
from mistudio_compute.dashboards.params import validate_params
from mistudio_export.formats.schemas import load_schema
from mistudio_export.messages import dashboard_request_from_pb, token_source_from_pb
from mistudio_export.options import DashboardRequest, ExportOptions
from mistudio_export.peers import TokenSource
from mistudio_export.plan import build_plan, dashboard_params, logit_lens_note
from mistudio_export.presets import PRESETS

from tests.export.service.test_plan import sae

TOKENS = TokenSource(token_file="/tokens.npy")


def plan_of(**options: object):  # type: ignore[no-untyped-def]
    return build_plan(sae(), ExportOptions(tokens=TOKENS, **options), "ana")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(PARAM_BOUNDS))
def test_export_and_compute_share_one_table_of_bounds(name: str) -> None:
    low, high = PARAM_BOUNDS[name]
    for bad in (low - 1, high + 1):
        if bad == 0:  # 0 on the wire means the default
            continue
        with pytest.raises(InvalidArgument) as err:
            dashboard_params(DashboardRequest(**{name: bad}))  # type: ignore[arg-type]
        assert err.value.field == f"config.dashboard.{name}"
        with pytest.raises(InvalidArgument):
            validate_params(replace(DashboardParams(), **{name: bad}))
    for good in (low, high):
        validate_params(dashboard_params(DashboardRequest(**{name: good})))  # type: ignore[arg-type]


DASHBOARD_PROTO = Path(__file__).resolve().parents[3] / "protos/mistudio/common/v1/dashboard.proto"


def test_the_contracts_comments_state_the_one_tables_defaults_and_bounds() -> None:
    """dashboard.proto documents each bounded field as "Default D; LOW-HIGH": the comment must say
    what PARAM_BOUNDS and DashboardParams say, so the contract cannot drift from the code."""
    message = DASHBOARD_PROTO.read_text().split("message DashboardParams {", 1)[1]
    documented = {
        name: (int(default), (int(low), int(high)))
        for default, low, high, name in re.findall(
            r"Default (\d+); (\d+)-(\d+)\.\n\s*int32 (\w+) =", message
        )
    }
    assert documented == {
        name: (getattr(DashboardParams(), name), bounds) for name, bounds in PARAM_BOUNDS.items()
    }


def test_preset_fills_only_what_the_request_leaves_unset() -> None:
    plan = plan_of(preset="quick", dashboard=DashboardRequest(n_top_examples=50))
    assert plan.params.n_top_examples == 50  # given
    assert plan.params.context_left == PRESETS["quick"].dashboard.context_left  # from the preset
    assert Component.QUANTILE_EXAMPLES in plan.omitted
    assert plan.tokens is not None and plan.tokens.max_tokens == 65_536
    budget = TokenSource(token_file="/tokens.npy", max_tokens=1000)
    kept = build_plan(sae(), ExportOptions(tokens=budget, preset="quick"), "ana")
    assert kept.tokens is not None and kept.tokens.max_tokens == 1000


def test_complete_preset_sets_every_maximum() -> None:
    params = plan_of(preset="complete").params
    assert {name: getattr(params, name) for name in PARAM_BOUNDS} == {
        name: high for name, (_, high) in PARAM_BOUNDS.items()
    }
    assert params.aggregate_all_tokens and not params.omitted


def test_neuronpedia_preset_follows_its_runner() -> None:
    p = plan_of(preset="neuronpedia")
    assert (p.params.n_top_examples, p.params.n_quantile_groups, p.params.logit_k) == (20, 5, 10)
    assert p.params.histogram_scale is BinScale.LINEAR
    assert p.tokens is not None and p.tokens.max_tokens == 24_576 * 128


def test_unknown_preset_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(InvalidArgument) as err:
        plan_of(preset="fast")
    assert err.value.field == "config.preset" and "quick" in err.value.fix


@pytest.mark.parametrize(
    ("component", "stage"),
    [
        (Component.LOGIT_LENS, ppb.STAGE_LOGIT_LENS),
        (Component.ACTIVATION_HISTOGRAM, ppb.STAGE_HISTOGRAMS),
        (Component.TOKEN_AGGREGATION, ppb.STAGE_TOKEN_AGGREGATION),
    ],
)
def test_left_out_component_has_no_stage_in_the_plan(component: Component, stage: int) -> None:
    plan = plan_of(dashboard=DashboardRequest(omitted=frozenset({component})))
    assert stage not in plan.stages and ppb.STAGE_ACTIVATION_PASS in plan.stages
    assert stage in plan_of().stages


def test_explanations_are_left_out_of_the_export_not_the_computation() -> None:
    plan = plan_of(dashboard=DashboardRequest(omitted=frozenset({Component.EXPLANATIONS})))
    assert Component.EXPLANATIONS in plan.omitted
    assert not plan.params.omitted  # same cache entries as a full export


def test_unknown_component_is_refused() -> None:
    with pytest.raises(InvalidArgument) as err:
        dashboard_request_from_pb(dpb.DashboardParams(omitted_components=[0]))
    assert err.value.field == "config.dashboard.omitted_components"


def test_neuronpedia_without_any_examples_is_refused() -> None:
    examples = frozenset({Component.TOP_EXAMPLES, Component.QUANTILE_EXAMPLES})
    with pytest.raises(InvalidArgument) as err:
        plan_of(dashboard=DashboardRequest(omitted=examples))
    assert err.value.field == "config.dashboard.omitted_components"


def test_query_hook_plans_without_a_logit_lens_and_says_so() -> None:
    hook = "blocks.8.attn.hook_q"
    plan = build_plan(sae(hook_point=hook, d_in=768), ExportOptions(tokens=TOKENS), "ana")
    assert Component.LOGIT_LENS in plan.omitted
    assert plan.params.omitted == {Component.LOGIT_LENS}
    assert ppb.STAGE_LOGIT_LENS not in plan.stages
    assert plan.notes == (logit_lens_note(hook),)


def test_cli_defaults_are_the_contracts_defaults() -> None:
    args = build_parser().parse_args(["run", "my-sae", "--tokens", "/tokens.npy"])
    config = export_config(args)
    assert not config.tokens.HasField("prepend_bos")
    assert prepend_bos(config.tokens) == DEFAULT_PREPEND_BOS
    assert token_source_from_pb(config.tokens).prepend_bos is None  # the contract's default
    from_cli = dashboard_params(dashboard_request_from_pb(config.dashboard))
    assert params_key(from_cli) == params_key(dashboard_params(DashboardRequest()))


def test_cli_switches_and_preset_reach_the_config() -> None:
    args = build_parser().parse_args(
        ["run", "s", "--preset", "quick", "--no-logit-lens", "--no-explanations", "--no-bos"]
    )
    config = export_config(args)
    assert config.preset == "quick" and config.tokens.prepend_bos is False
    assert list(config.dashboard.omitted_components) == sorted(
        [dpb.DASHBOARD_COMPONENT_LOGIT_LENS, dpb.DASHBOARD_COMPONENT_EXPLANATIONS]
    )


def test_prd_metadata_schema_names_every_component() -> None:
    schema = load_schema("prd_metadata")
    assert schema["properties"]["omitted_components"]["items"]["enum"] == [
        c.value for c in Component
    ]
    assert json.dumps(schema)  # loads as plain JSON
