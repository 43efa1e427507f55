"""Tiny, hand-built dashboards and export facts, consistent in every cross-field rule."""

from __future__ import annotations

from mistudio_common.dashboard import (
    ActivationExample,
    BinScale,
    FeatureDashboard,
    FeatureStatistics,
    Histogram,
    LogitEntry,
    QuantileGroup,
    SourceRef,
    TokenAggregate,
    TokenRankMetric,
)
from mistudio_export.records import ExplanationRecord, NeuronpediaNaming, SaeInfo

CREATED_AT = "2025-01-15T10:30:00Z"
TOKENS = ["The", " quick", " brown", " fox", " jumps", "."]
TOKEN_IDS = [464, 2068, 7586, 21831, 18045, 13]


def example(peak: float, peak_at: int = 2, *, row: int = 0) -> ActivationExample:
    """Six tokens; ``peak`` at ``peak_at``, small positive values elsewhere."""
    values = [0.0, 0.25, 0.1, 0.0, 0.125, 0.0]
    values[peak_at] = peak
    return ActivationExample(
        tokens=list(TOKENS),
        token_ids=list(TOKEN_IDS),
        values=values,
        max_value=peak,
        max_token_index=peak_at,
        source=SourceRef(dataset="roneneldan/TinyStories", row=row, offset=16),
        qualifying_token_index=peak_at,
    )


def statistics(max_activation: float, *, dead: bool = False) -> FeatureStatistics:
    if dead:
        return FeatureStatistics(0.0, 0.0, 0.0, 0.0, 0.0, True, {}, 0.0, 1000, 0)
    return FeatureStatistics(
        activation_frequency=0.011,
        max_activation=max_activation,
        mean_activation=0.75,
        std_activation=0.5,
        l0_contribution=0.011,
        dead_feature=False,
        quantiles={0.25: 0.2, 0.5: 0.5, 0.75: 1.0, 0.95: 2.0, 0.99: max_activation},
        quantile_relative_error=0.01,
        token_count=1000,
        nonzero_count=11,
    )


def activation_histogram(*, dead: bool = False) -> Histogram:
    if dead:
        return Histogram([], [], BinScale.LOG, 1000, 0)
    return Histogram([0.1, 0.5, 1.0, 2.0, 4.0], [5, 3, 2, 1], BinScale.LOG, 1000, 11)


def logit_histogram() -> Histogram:
    return Histogram([-1.0, 0.0, 1.0], [300, 212], BinScale.LINEAR, 512, 512)


def dashboard(index: int = 0, *, dead: bool = False, n_top: int = 10) -> FeatureDashboard:
    """A live feature with ``n_top`` top examples and two quantile groups, or a dead one."""
    peak = 3.5 + index
    top = [] if dead else [example(peak - k * 0.25, row=k) for k in range(n_top)]
    groups = (
        []
        if dead
        else [
            QuantileGroup(1.0, 2.0, 0.2, [example(1.5, 1, row=10), example(1.25, 3, row=11)]),
            QuantileGroup(0.0, 1.0, 0.8, [example(0.5, 4, row=12)]),
        ]
    )
    return FeatureDashboard(
        feature_index=index,
        top_examples=top,
        quantile_groups=groups,
        top_positive_logits=[LogitEntry("fast", 3001, 3.45, 1), LogitEntry("swift", 2952, 3.25, 2)],
        top_negative_logits=[
            LogitEntry("slow", 3105, -2.875, 1),
            LogitEntry("lazy", 16931, -2.5, 2),
        ],
        activation_histogram=activation_histogram(dead=dead),
        logit_histogram=logit_histogram(),
        statistics=statistics(0.0 if dead else peak, dead=dead),
        top_tokens=[] if dead else [TokenAggregate(" quick", 2068, 45.5, 23, 1.978, peak)],
        top_tokens_metric=TokenRankMetric.SUM,
    )


def sae_info(**overrides: object) -> SaeInfo:
    fields: dict[str, object] = dict(
        model_id="gpt2-small",
        sae_id="layer_6_res_16k",
        hook_point="blocks.6.hook_resid_post",
        layer=6,
        d_sae=16,
        d_in=8,
        architecture="standard",
        training_dataset="roneneldan/TinyStories",
        n_training_tokens=1_000_000,
        l0=45.25,
        explained_variance=0.92,
        created_at=CREATED_AT,
        mistudio_version="1.2.0",
        n_prompts=64,
        n_tokens_in_prompt=128,
        prepend_bos=True,
        model_layers=12,
    )
    fields.update(overrides)
    return SaeInfo(**fields)  # type: ignore[arg-type]


def naming(**overrides: object) -> NeuronpediaNaming:
    fields: dict[str, object] = dict(
        model_id="gpt2-small",
        source_set="mistudio-res-16k",
        layer=6,
        creator_name="miStudio tests",
        release_id="mistudio-tests",
        release_title="miStudio test SAEs",
        hf_repo="mistudio/gpt2-small-res-16k",
        source_set_description="Residual stream - 16k",
    )
    fields.update(overrides)
    return NeuronpediaNaming(**fields)  # type: ignore[arg-type]


def explanation(
    index: int = 0, description: str = "words about speed", **overrides: object
) -> ExplanationRecord:
    fields: dict[str, object] = dict(
        feature_index=index,
        description=description,
        method="np_max-act-logits",
        explainer_model="gpt-4o-mini",
        score=0.75,
        created_at=CREATED_AT,
    )
    fields.update(overrides)
    return ExplanationRecord(**fields)  # type: ignore[arg-type]
