"""Validation of DashboardParams and of the run's inputs, before any work starts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_options import PARAM_BOUNDS, Component, check_bounds
from mistudio_common.errors import InvalidArgument

from mistudio_compute.dashboards.keys import MAX_POSITIONS
from mistudio_compute.dashboards.state import StateConfig

SAMPLE_OVERSAMPLING = 4
"""Sampled positions per quantile-group example slot, so de-duplication rarely starves a bin."""


def validate_params(params: DashboardParams) -> None:
    """The shared bounds (``dashboard_options.PARAM_BOUNDS``), and only computed components
    left out."""
    check_bounds(((name, getattr(params, name)) for name in PARAM_BOUNDS), "", False)
    if Component.EXPLANATIONS in params.omitted:
        raise InvalidArgument(
            "explanations are not computed, so they cannot be left out of a computation",
            field="omitted_components",
            fix="leave explanations out in the export's configuration instead",
        )


def state_config(params: DashboardParams, special_ids: frozenset[int]) -> StateConfig:
    """The part of the parameters the streaming pass depends on."""
    n_slots = quantile_groups(params) * params.examples_per_quantile_group
    tokens = params.includes(Component.TOKEN_AGGREGATION) and params.aggregate_all_tokens
    return StateConfig(
        n_top=params.n_top_examples if params.includes(Component.TOP_EXAMPLES) else 0,
        n_sample=SAMPLE_OVERSAMPLING * n_slots,
        context_left=params.context_left,
        context_right=params.context_right,
        special_ids=tuple(sorted(special_ids)),
        track_tokens=tokens,
    )


def quantile_groups(params: DashboardParams) -> int:
    """Quantile groups to fill: none when quantile examples are left out."""
    return params.n_quantile_groups if params.includes(Component.QUANTILE_EXAMPLES) else 0


def validate_features(features: Sequence[int] | None, d_sae: int) -> torch.Tensor:
    """Sorted unique feature indices [F]; None means every feature."""
    if features is None or len(features) == 0:
        return torch.arange(d_sae)
    f = torch.as_tensor(list(features), dtype=torch.int64)
    bad = f[(f < 0) | (f >= d_sae)]
    if len(bad):
        raise InvalidArgument(
            f"feature index {int(bad[0])} is out of range for an SAE with {d_sae} features",
            field="feature_indices",
            fix=f"use indices in [0, {d_sae - 1}]",
        )
    return torch.unique(f)


def validate_tokens(tokens: np.ndarray, rows: range) -> None:
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise InvalidArgument(
            f"token array has shape {tuple(tokens.shape)}, expected [rows, T] with rows, T > 0",
            field="tokens",
            fix="pass a non-empty 2-D array of token ids",
        )
    if not np.issubdtype(tokens.dtype, np.integer):
        raise InvalidArgument(
            f"token array has dtype {tokens.dtype}, expected an integer type",
            field="tokens",
            fix="pass token ids as integers",
        )
    if tokens.shape[0] * tokens.shape[1] > MAX_POSITIONS:
        raise InvalidArgument(
            f"{tokens.shape[0]} x {tokens.shape[1]} tokens exceed the {MAX_POSITIONS} positions "
            "one pass can address",
            field="tokens",
            fix="split the token source into several jobs",
        )
    if rows.step != 1 or rows.start < 0 or rows.stop > tokens.shape[0] or len(rows) == 0:
        raise InvalidArgument(
            f"row range {rows} is not a non-empty slice of {tokens.shape[0]} rows",
            field="rows",
            fix="pass range(start, stop) within the token array",
        )


def validate_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise InvalidArgument(
            f"batch_size is {batch_size}, must be at least 1",
            field="batch_size",
            fix="pass a positive number of rows per forward pass",
        )
