"""An export request as plain values: what the servicer and the job engine translate a request's
``ExportConfig`` into (``messages``), and what the presets, the plan and the estimates take.

Unset stays unset here (0, "" or None), so a preset can still fill it; the plan resolves every
default and checks every bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mistudio_common.dashboard import BinScale, TokenRankMetric
from mistudio_common.dashboard_options import Component

from mistudio_export.packaging import Compression, ExportFormat
from mistudio_export.peers import TokenSource
from mistudio_export.selection import FeatureSelection


@dataclass(frozen=True)
class DashboardRequest:
    """Dashboard options as a request gives them: 0 (None for the enums) leaves a field to the
    preset, then to ``DashboardParams``' default. The int names are ``PARAM_BOUNDS``' keys."""

    n_top_examples: int = 0
    n_quantile_groups: int = 0
    examples_per_quantile_group: int = 0
    context_left: int = 0
    context_right: int = 0
    logit_k: int = 0
    histogram_bins: int = 0
    logit_histogram_bins: int = 0
    n_top_tokens: int = 0
    histogram_scale: BinScale | None = None
    token_rank_metric: TokenRankMetric | None = None
    aggregate_all_tokens: bool = False
    omitted: frozenset[Component] = frozenset()


@dataclass(frozen=True)
class NamingRequest:
    """The Neuronpedia names a request gives; each empty one takes its default in the plan."""

    model_id: str = ""
    source_set: str = ""
    creator_name: str = ""
    release_id: str = ""
    release_title: str = ""
    hf_repo_id: str = ""
    visibility: str = ""


@dataclass(frozen=True)
class ExportOptions:
    """Everything one export is asked to do (``config.*`` of the request), not yet checked."""

    formats: tuple[ExportFormat, ...] = ()
    """Empty: every format."""
    selection: FeatureSelection = field(default_factory=FeatureSelection)
    dashboard: DashboardRequest = field(default_factory=DashboardRequest)
    tokens: TokenSource = field(default_factory=TokenSource)
    """Unset (``given`` false): the token source recorded with the SAE."""
    gzip_json: bool = False
    zip_compression: Compression = Compression.STORED
    delta_base_job_id: str = ""
    merge_with_base: bool = False
    auto_fix: bool = False
    naming: NamingRequest = field(default_factory=NamingRequest)
    device: str = ""
    batch_size: int = 0
    with_preview: bool = False
    preset: str = ""
