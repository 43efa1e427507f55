"""ComputeService's requests and answers as plain values: the servicer translates each request
into these once, and each answer from them (``messages``); the planning, the estimate and the
jobs take and return only these.

The dashboard parameters are ``mistudio_common.dashboard.DashboardParams`` (its defaults filled
in; the bounds are ``dashboard_options.PARAM_BOUNDS``, checked by the planning) and a token
source is ``tokens.TokenSourceSpec`` (its BOS setting resolved), so neither has a second
definition here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from mistudio_common.dashboard import DashboardParams
from mistudio_common.stage_rates import StageEstimate

from mistudio_compute.tokens import TokenSourceSpec


@dataclass(frozen=True)
class StoredSae:
    """An SAE registered in the store: ids are unique per owner (empty: the only one)."""

    sae_id: str
    owner: str = ""


@dataclass(frozen=True)
class SaeFiles:
    """An SAE given as SAELens files (a folder or a weights file) instead of a store record."""

    path: str
    config: Mapping[str, Any] = field(default_factory=dict)
    """cfg.json values that override (or stand in for) the files' own."""
    model_id: str = ""


SaeRef: TypeAlias = StoredSae | SaeFiles | None
"""Which SAE a request names; None when it names none (the planning refuses that, naming
``sae``)."""


@dataclass(frozen=True)
class ComputationRequest:
    """A ComputeDashboards request: what to compute, over which tokens, and how."""

    sae: SaeRef
    tokens: TokenSourceSpec = field(default_factory=TokenSourceSpec)
    params: DashboardParams = field(default_factory=DashboardParams)
    feature_indices: tuple[int, ...] = ()
    """Empty: every feature."""
    request_id: str = ""
    """Empty: the job manager makes one up (the request then cannot be repeated)."""
    batch_size: int = 0
    """Rows per forward pass; 0 is the service's default."""
    device: str = ""
    reuse_cached: bool = False
    hook_point: str = ""
    """Overrides the SAE's own hook point."""
    model_id: str = ""
    """Overrides the SAE's own model."""


@dataclass(frozen=True)
class EstimateRequest:
    """An EstimateComputation request: the computation's size, before any job exists."""

    sae: SaeRef
    tokens: TokenSourceSpec = field(default_factory=TokenSourceSpec)
    params: DashboardParams = field(default_factory=DashboardParams)
    feature_count: int = 0
    """0: every feature of the SAE."""
    batch_size: int = 0


@dataclass(frozen=True)
class SaeCheck:
    """What ValidateSae reports of an SAE that loads against its model."""

    architecture: str
    d_in: int
    d_sae: int
    hook_point: str
    model_id: str
    hook_width: int
    d_vocab: int
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class HookPoint:
    """What ResolveHookPoint reports: a layer's hook of one kind in a model."""

    name: str
    width: int
    n_layers: int


@dataclass(frozen=True)
class ComputationEstimate:
    """What EstimateComputation predicts of a computation (``estimate.estimate_computation``)."""

    seconds: float
    """The stages' seconds together."""
    tokens: int
    measured: bool
    """Whether every stage's rate was measured here (otherwise some are the priors)."""
    params: DashboardParams
    """The request's, filled in as the dashboards would be cached under."""
    n_rows: int
    context_size: int
    prepend_bos: bool
    n_layers: int
    """Blocks of the SAE's model; 0 when the SAE names no model."""
    peak_memory_bytes: int
    """Beyond the model and the SAE weights."""
    stages: tuple[StageEstimate, ...]
    """The job's stages in order."""
