"""The feature-dashboard data model, as plain dataclasses.

The compute service builds these, the store caches them and the export service serialises them.
They mirror ``mistudio.common.v1.FeatureDashboard``; ``mistudio_common.dashboard_codec`` is the
one place that converts between the two and defines the canonical JSON and content hash.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from mistudio_common.dashboard_options import Component

COMPUTATION_VERSION = "3"
"""Bumped whenever a change to the computation would change its output for equal inputs."""

QUANTILE_LEVELS: tuple[float, ...] = (0.25, 0.5, 0.75, 0.95, 0.99)


class BinScale(enum.Enum):
    LOG = "log"
    LINEAR = "linear"


class TokenRankMetric(enum.Enum):
    SUM = "sum"
    COUNT = "count"
    MEAN = "mean"


@dataclass(slots=True)
class SourceRef:
    """Where an example's window sits in the corpus: a document and a token offset in it."""

    dataset: str
    row: int
    """The document the qualifying token belongs to (a text line, a story, a dataset row)."""
    offset: int
    """Offset within that document of the window's first token; negative when the window begins
    before the document (on the BOS that separates it from the previous one, or in that one)."""


@dataclass(slots=True)
class ActivationExample:
    tokens: list[str]
    token_ids: list[int]
    values: list[float]
    max_value: float
    max_token_index: int
    source: SourceRef
    qualifying_token_index: int
    """The token the example was chosen for: a top example's peak, a quantile example's sampled
    in-bin token (SAEDashboard's qualifying_token_index); max_token_index names the window's max."""


@dataclass(slots=True)
class QuantileGroup:
    bin_min: float
    bin_max: float
    bin_contains: float
    """Fraction of the feature's non-zero activations inside [bin_min, bin_max]."""
    examples: list[ActivationExample] = field(default_factory=list)


@dataclass(slots=True)
class Histogram:
    bin_edges: list[float]
    counts: list[int]
    scale: BinScale
    total_count: int
    nonzero_count: int


@dataclass(slots=True)
class LogitEntry:
    token: str
    token_id: int
    value: float
    rank: int
    """1-based; ties broken by the lower token id."""


@dataclass(slots=True)
class FeatureStatistics:
    activation_frequency: float
    max_activation: float
    mean_activation: float
    std_activation: float
    l0_contribution: float
    dead_feature: bool
    quantiles: dict[float, float]
    """Quantile level -> value, over the non-zero activations (empty for a dead feature)."""
    quantile_relative_error: float
    token_count: int
    nonzero_count: int


@dataclass(slots=True)
class TokenAggregate:
    token: str
    token_id: int
    total_activation: float
    count: int
    mean_activation: float
    max_activation: float


@dataclass(slots=True)
class FeatureDashboard:
    feature_index: int
    top_examples: list[ActivationExample]
    quantile_groups: list[QuantileGroup]
    top_positive_logits: list[LogitEntry]
    top_negative_logits: list[LogitEntry]
    activation_histogram: Histogram
    logit_histogram: Histogram
    statistics: FeatureStatistics
    top_tokens: list[TokenAggregate]
    top_tokens_metric: TokenRankMetric


@dataclass(frozen=True, slots=True)
class DashboardParams:
    """Computation parameters; equal params (and version) make cached dashboards reusable."""

    n_top_examples: int = 20
    n_quantile_groups: int = 5
    examples_per_quantile_group: int = 5
    context_left: int = 16
    context_right: int = 8
    logit_k: int = 10
    histogram_bins: int = 50
    histogram_scale: BinScale = BinScale.LOG
    logit_histogram_bins: int = 50
    token_rank_metric: TokenRankMetric = TokenRankMetric.SUM
    n_top_tokens: int = 20
    aggregate_all_tokens: bool = False
    token_source_fingerprint: str = ""
    computation_version: str = COMPUTATION_VERSION
    omitted: frozenset[Component] = frozenset()
    """Computed components left out: not computed, their fields left empty."""

    def includes(self, component: Component) -> bool:
        return component not in self.omitted
