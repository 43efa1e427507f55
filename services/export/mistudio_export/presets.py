"""Named sets of dashboard options a user can pick without knowing every parameter (NFR-4.1).

A preset fills what the request leaves unset: each dashboard field that is 0 (or an unspecified
enum), and the token budget when ``max_tokens`` is 0; left-out components add up. ListPresets and
``mistudio-export presets`` list these with their estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.dashboard_codec import COMPONENT_TO_PB
from mistudio_common.dashboard_options import PARAM_BOUNDS, Component
from mistudio_common.errors import InvalidArgument

NEURONPEDIA_PROMPTS, NEURONPEDIA_PROMPT_TOKENS = 24_576, 128
"""SAEDashboard's NeuronpediaRunnerConfig defaults (shared/reference/peers.md)."""


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    dashboard: dpb.DashboardParams
    max_tokens: int
    """Tokens read from the token source; 0 reads them all."""

    def to_pb(self) -> epb.Preset:
        return epb.Preset(
            name=self.name,
            title=self.title,
            description=self.description,
            dashboard=self.dashboard,
            max_tokens=self.max_tokens,
        )


def _omit(*components: Component) -> list[dpb.DashboardComponent.ValueType]:
    return [COMPONENT_TO_PB[c] for c in components]


def _maxima() -> dpb.DashboardParams:
    params = dpb.DashboardParams(aggregate_all_tokens=True)
    for name, (_, high) in PARAM_BOUNDS.items():
        setattr(params, name, high)
    return params


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="quick",
            title="Quick look",
            description="20 top examples with short contexts over 65,536 tokens, no quantile "
            "examples: minutes, not hours, to see whether the features make sense.",
            dashboard=dpb.DashboardParams(
                n_top_examples=20,
                context_left=8,
                context_right=4,
                logit_k=10,
                histogram_bins=20,
                logit_histogram_bins=20,
                n_top_tokens=10,
                omitted_components=_omit(Component.QUANTILE_EXAMPLES),
            ),
            max_tokens=65_536,
        ),
        Preset(
            name="neuronpedia",
            title="Neuronpedia standard",
            description="What Neuronpedia's own pipeline (SAEDashboard's neuronpedia runner) "
            "produces: 20 top examples, 5 groups of 5 interval examples, 10 top/bottom logits, "
            "50-bin linear histograms, 128-token contexts, over 24,576 prompts x 128 tokens.",
            dashboard=dpb.DashboardParams(
                n_top_examples=20,
                n_quantile_groups=5,
                examples_per_quantile_group=5,
                context_left=64,
                context_right=63,
                logit_k=10,
                histogram_bins=50,
                histogram_scale=dpb.BIN_SCALE_LINEAR,
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


def apply_preset(config: epb.ExportConfig, field: str = "config.preset") -> epb.ExportConfig:
    """``config`` with its preset's options filled in where it leaves them unset."""
    if not config.preset:
        return config
    preset = PRESETS.get(config.preset)
    if preset is None:
        raise InvalidArgument(
            f"unknown preset {config.preset!r}",
            field=field,
            fix=f"use one of {', '.join(PRESETS)} (ListPresets describes them)",
        )
    out = epb.ExportConfig()
    out.CopyFrom(config)
    given, dashboard = config.dashboard, out.dashboard
    for name in (*PARAM_BOUNDS, "histogram_scale", "token_rank_metric"):
        if not getattr(given, name):
            setattr(dashboard, name, getattr(preset.dashboard, name))
    dashboard.aggregate_all_tokens |= preset.dashboard.aggregate_all_tokens
    missing = set(preset.dashboard.omitted_components) - set(given.omitted_components)
    dashboard.omitted_components.extend(sorted(missing))
    return out


def with_token_budget(max_tokens: int, preset: str) -> int:
    """``max_tokens``, or the preset's token budget when it sets none (after ``apply_preset``)."""
    return max_tokens if not preset or max_tokens else PRESETS[preset].max_tokens
