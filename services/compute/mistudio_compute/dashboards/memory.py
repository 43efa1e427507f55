"""How much memory a dashboard computation will take, predicted before it starts.

The streaming pass keeps, per feature, the context windows of its top examples and of its
quantile-group sample (``PassState``): ``(n_top + n_sample) * width`` float32 values. Updating
them builds candidate copies, and finalising turns them into example objects, so the peak is a
measured multiple of that (``WINDOW_COPIES``; ``tests/security/test_limits.py`` holds the
prediction to within 30% of a measured peak). Each batch adds its dense activations
``[batch_rows * context, d_sae]`` and the copies the pass makes of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import ResourceExhausted

from mistudio_compute.dashboards.grid import FineGrid
from mistudio_compute.dashboards.params import state_config

WINDOW_COPIES = 5.6
"""Peak bytes per byte of stored windows (candidates, merge copies, finalised examples);
measured on CPU at the largest parameters."""
FEATURE_OVERHEAD_BYTES = 200_000
"""Per feature beyond the windows: histogram grid, sample keys, token totals, finalisation."""
BATCH_COPIES = 3
"""Dense activations, their non-zero selection and the window gather of one batch."""


@dataclass(frozen=True)
class MemoryEstimate:
    per_feature: int
    n_features: int
    batch: int
    window_share: float
    """Part of ``per_feature`` spent on context windows (what the parameters control)."""

    @property
    def total(self) -> int:
        return self.per_feature * self.n_features + self.batch

    def largest_lever(self) -> str:
        """The request field whose reduction saves the most memory."""
        if self.batch > self.per_feature * self.n_features:
            return "batch_size"
        return "params.n_quantile_groups" if self.window_share > 0.5 else "feature_indices"


def predict_memory(
    params: DashboardParams, n_features: int, d_sae: int, batch_positions: int
) -> MemoryEstimate:
    """Peak bytes of computing ``n_features`` dashboards, beyond the model and the SAE."""
    config = state_config(params, frozenset())
    windows = (config.n_top + config.n_sample) * config.width * 4 * WINDOW_COPIES
    per_feature = int(windows + FEATURE_OVERHEAD_BYTES + FineGrid().n_buckets * 8)
    batch = int(batch_positions * d_sae * 4 * BATCH_COPIES)
    return MemoryEstimate(per_feature, n_features, batch, windows / per_feature)


def require_one_feature_fits(
    params: DashboardParams, n_features: int, d_sae: int, batch_positions: int, budget: int
) -> None:
    """RESOURCE_EXHAUSTED, naming what to lower, when a shard of a single feature beside one
    batch would exceed ``budget``; anything larger runs in feature shards that fit."""
    one = predict_memory(params, 1, d_sae, batch_positions)
    if one.total <= budget:
        return
    whole = predict_memory(params, n_features, d_sae, batch_positions)
    lever = "batch_size" if one.batch > one.per_feature else "params.n_quantile_groups"
    raise ResourceExhausted(
        f"one feature with these parameters would take about {one.per_feature / 2**20:.1f} MiB "
        f"beside a batch of {one.batch / 2**20:.1f} MiB ({whole.total / 2**30:.1f} GiB for all "
        f"{n_features}); the compute service's budget is {budget / 2**20:.0f} MiB; lower {lever}",
        field=lever,
        fix="lower n_quantile_groups, examples_per_quantile_group, n_top_examples, the context "
        "widths or batch_size (or raise MISTUDIO_COMPUTE_MEMORY_BUDGET_BYTES)",
    )
