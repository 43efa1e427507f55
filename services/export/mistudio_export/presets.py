"""Named sets of dashboard options a user can pick without knowing every parameter (NFR-4.1).

A preset fills what the request leaves unset: each dashboard field that is 0 (or an unspecified
enum), and the token budget when ``max_tokens`` is 0; left-out components add up. ListPresets and
``mistudio-export presets`` list these with their estimates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mistudio_common.dashboard import BinScale
from mistudio_common.dashboard_options import PARAM_BOUNDS, Component
from mistudio_common.errors import InvalidArgument

from mistudio_export.options import DashboardRequest, ExportOptions

NEURONPEDIA_PROMPTS, NEURONPEDIA_PROMPT_TOKENS = 24_576, 128
"""SAEDashboard's NeuronpediaRunnerConfig defaults (shared/reference/peers.md)."""


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    dashboard: DashboardRequest
    max_tokens: int
    """Tokens read from the token source; 0 reads them all."""


def _maxima() -> DashboardRequest:
    highs: dict[str, Any] = {name: high for name, (_, high) in PARAM_BOUNDS.items()}
    return replace(DashboardRequest(aggregate_all_tokens=True), **highs)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="quick",
            title="Quick look",
            description="20 top examples with short contexts over 65,536 tokens, no quantile "
            "examples: minutes, not hours, to see whether the features make sense.",
            dashboard=DashboardRequest(
                n_top_examples=20,
                context_left=8,
                context_right=4,
                logit_k=10,
                histogram_bins=20,
                logit_histogram_bins=20,
                n_top_tokens=10,
                omitted=frozenset({Component.QUANTILE_EXAMPLES}),
            ),
            max_tokens=65_536,
        ),
        Preset(
            name="neuronpedia",
            title="Neuronpedia standard",
            description="What Neuronpedia's own pipeline (SAEDashboard's neuronpedia runner) "
            "produces: 20 top examples, 5 groups of 5 interval examples, 10 top/bottom logits, "
            "50-bin linear histograms, 128-token contexts, over 24,576 prompts x 128 tokens.",
            dashboard=DashboardRequest(
                n_top_examples=20,
                n_quantile_groups=5,
                examples_per_quantile_group=5,
                context_left=64,
                context_right=63,
                logit_k=10,
                histogram_bins=50,
                histogram_scale=BinScale.LINEAR,
                logit_histogram_bins=50,
            ),
            max_tokens=NEURONPEDIA_PROMPTS * NEURONPEDIA_PROMPT_TOKENS,
        ),
        Preset(
            name="complete",
            title="Everything at the maxima",
            description="Every part at its largest setting, tokens ranked over every "
            "activation, over the whole token source: the largest and slowest export.",
            dashboard=_maxima(),
            max_tokens=0,
        ),
    )
}


def apply_preset(options: ExportOptions, field: str = "config.preset") -> ExportOptions:
    """``options`` with its preset's dashboard options filled in where it leaves them unset."""
    if not options.preset:
        return options
    preset = PRESETS.get(options.preset)
    if preset is None:
        raise InvalidArgument(
            f"unknown preset {options.preset!r}",
            field=field,
            fix=f"use one of {', '.join(PRESETS)} (ListPresets describes them)",
        )
    given, filler = options.dashboard, preset.dashboard
    unset = {
        name: getattr(filler, name)
        for name in (*PARAM_BOUNDS, "histogram_scale", "token_rank_metric")
        if getattr(given, name) in (0, None)
    }
    dashboard = replace(
        given,
        **unset,
        aggregate_all_tokens=given.aggregate_all_tokens or filler.aggregate_all_tokens,
        omitted=given.omitted | filler.omitted,
    )
    return replace(options, dashboard=dashboard)


def with_token_budget(max_tokens: int, preset: str) -> int:
    """``max_tokens``, or the preset's token budget when it sets none (after ``apply_preset``)."""
    return max_tokens if not preset or max_tokens else PRESETS[preset].max_tokens
