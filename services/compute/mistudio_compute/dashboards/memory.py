"""How much memory a dashboard computation takes, predicted before it starts: the one model that
plans feature shards under the budget, refuses a request that cannot fit one feature, and gives
EstimateComputation its peak.

A shard's peak is its pass state (``PassState.bytes_per_feature``, read from what the state
allocates, times the copies a batch makes), two chunks of finalised dashboards (Python objects,
sized by the tokens of their shown examples) and one batch of its features' active entries
(a shard encodes only its own features). Every term grows with the shard, none with d_sae: more
features than fit run in more shards. A computation in several shards also keeps every token's
hook activations from the first shard's pass when they take at most ``KEPT_SHARE`` of the
planned bytes, so that later shards skip the model forward; the shards are then planned in the
rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import ResourceExhausted

from mistudio_compute.dashboards.kept_activations import BYTES_PER_VALUE
from mistudio_compute.dashboards.params import quantile_groups
from mistudio_compute.dashboards.state import PassState, StateConfig

STATE_COPIES = 1.6
"""Peak bytes per byte of pass state: the state, the candidate rows a batch folds in, and the
example plan finalisation builds from it. The update writes only the sample slots that change
(no longer whole rebuilt rows): the largest-parameter probe (tests/security/memory_probe.py)
measured 106-115 MB for 68 MB of state and 27 MB of dashboards, where 2.6 copies had fitted
the old update's 190-200 MB."""
BYTES_PER_SHOWN_TOKEN = 100
"""Finalised dashboards are protobuf messages: at most about this much per token of each shown
example's window (its string, id and value; 90-100 measured). A window never spans more than its
row, so it counts min(width, row length) tokens. Up to two chunks are alive at once: the one
being handed on and the one being built."""
BATCH_COPIES = 2
"""Float32 values' worth of bytes one batch holds per position and feature of the shard: the
active entries with their windows, which grow with the features' density and the context width
(a CPU pass takes them from each encode tile in cache: no dense activations are held). Measured
on the bench (16,384 features, two pass threads, 1% density): a pass peaked 1.8 bytes per value
above its state, 5.8 while it held the dense activations (4 bytes), when 3 copies fitted a
whole export's 7.6; the 4 bytes are taken off those 3 copies, which keep their margin (2
copies had let a 16,384-feature shard peak 964 MB above its start for 857 planned). Tiny's
2-8% took 11-23 in a first batch, where every active entry is a top candidate."""
PLANNED_SHARE = 0.8
"""Shards are planned to fill this share of the budget: the model is within 30% of measured
peaks, not exact, and the budget is a limit the peak must stay under."""
KEPT_SHARE = 0.5
"""Hook activations are kept between feature shards only while they take at most this share of
the planned bytes: kept, they leave less room per shard (maybe more shards), and a shard then
costs its encode and state updates but no model forward."""


@dataclass(frozen=True, slots=True)
class MemoryModel:
    """Predicted peak bytes of a computation beyond the model and the SAE weights; fitted on
    CPU measurements (tests/compute/dashboards/test_shards.py holds it within 30% of a measured
    peak)."""

    per_feature: int
    """Pass state of one feature (and its copies), whatever the number of tokens."""
    per_dashboard: int
    """One finalised dashboard while its chunk is handed on."""
    per_batch_value: int
    """Working set of one token position of a batch for one feature of the shard."""

    @classmethod
    def of(
        cls, params: DashboardParams, config: StateConfig, n_rows: int, seq_len: int
    ) -> MemoryModel:
        """For a pass over ``n_rows`` rows of ``seq_len`` tokens (the positions size the state's
        counts; the row length bounds an example's window)."""
        shown = config.n_top + quantile_groups(params) * params.examples_per_quantile_group
        positions = n_rows * seq_len
        return cls(
            per_feature=math.ceil(PassState.bytes_per_feature(config, positions) * STATE_COPIES),
            per_dashboard=shown * min(config.width, seq_len) * BYTES_PER_SHOWN_TOKEN,
            per_batch_value=4 * BATCH_COPIES,
        )

    def peak(self, shard_size: int, batch_positions: int, chunk_size: int) -> int:
        """Peak bytes while a shard of ``shard_size`` features runs."""
        return (
            self.per_feature * shard_size
            + self.per_dashboard * min(2 * chunk_size, shard_size)
            + self.per_batch_value * batch_positions * shard_size
        )


@dataclass(frozen=True, slots=True)
class ShardPlan:
    shard_size: int
    """Features per shard."""
    batch_rows: int
    """Token rows per batch: as asked, or, while the features need more than one shard, halved
    until a batch takes no more per feature than the pass state does."""
    peak_bytes: int
    """The predicted peak of running this plan (``MemoryModel.peak`` and the kept
    activations)."""
    kept_bytes: int = 0
    """Hook activations kept from the first shard's pass for the later shards (0: each shard
    runs the model forward)."""
    shards: int = 1
    """Shards of ``shard_size`` features (the last holds the rest)."""

    @property
    def forwards(self) -> int:
        """Model forwards over the tokens: one per shard unless the activations are kept."""
        return 1 if self.kept_bytes else self.shards


def plan_within_budget(
    params: DashboardParams,
    config: StateConfig,
    n_features: int,
    *,
    batch_rows: int,
    seq_len: int,
    n_rows: int,
    chunk_size: int,
    budget: int | None,
    hook_width: int = 0,
) -> ShardPlan:
    """Shard size and batch rows whose peak fills ``PLANNED_SHARE`` of ``budget`` bytes at most,
    in shards of equal size (no budget: one shard, rows as asked); RESOURCE_EXHAUSTED, naming
    what to lower, when not even one feature fits. When the features take more than one shard,
    halving the rows of a batch that would take more per feature than the state lets more of
    them share one model pass; when they all fit one, the rows stay as asked (a larger batch
    folds faster). Several shards keep the hook activations (``hook_width`` values per token;
    0: never) when they take at most ``KEPT_SHARE`` of the planned bytes and leave room for a
    feature."""
    model = MemoryModel.of(params, config, n_rows, seq_len)
    n_features = max(1, n_features)

    def positions(rows: int) -> int:  # a batch never holds more rows than there are
        return min(rows, max(1, n_rows)) * seq_len

    if budget is None:
        return ShardPlan(n_features, batch_rows,
                         model.peak(n_features, positions(batch_rows), chunk_size))  # fmt: skip
    usable = int(budget * PLANNED_SHARE)
    fitting = _features_per_shard(model, positions(batch_rows), chunk_size, usable)
    while (
        fitting < n_features
        and batch_rows > 1
        and model.per_batch_value * positions(batch_rows) > model.per_feature
    ):
        batch_rows //= 2
        fitting = _features_per_shard(model, positions(batch_rows), chunk_size, usable)
    batch = positions(batch_rows)
    if fitting < 1:
        raise _no_room(model, batch, usable)
    held = n_rows * seq_len * hook_width * BYTES_PER_VALUE  # every token's hook activations
    beside = _features_per_shard(model, batch, chunk_size, usable - held)
    keep = fitting < n_features and 0 < held <= usable * KEPT_SHARE and beside >= 1
    kept = held if keep else 0
    fitting = min(n_features, beside if keep else fitting)
    size = -(-n_features // -(-n_features // fitting))  # as many shards, evened out
    peak = model.peak(size, batch, chunk_size) + kept
    return ShardPlan(size, batch_rows, peak, kept, shards=-(-n_features // size))


def _features_per_shard(
    model: MemoryModel, batch_positions: int, chunk_size: int, usable: int
) -> int:
    """The most features whose ``model.peak`` fits ``usable`` bytes (0 when none does)."""
    each = model.per_feature + model.per_batch_value * batch_positions
    alive = 2 * chunk_size  # shards at least this large hold two whole chunks
    fitting = (usable - model.per_dashboard * alive) // each
    if fitting < alive:  # a smaller shard's dashboards are all alive at once
        fitting = usable // (each + model.per_dashboard)
    return max(0, fitting)


def _no_room(model: MemoryModel, batch_positions: int, usable: int) -> ResourceExhausted:
    one = model.per_feature + model.per_batch_value * batch_positions + model.per_dashboard
    return ResourceExhausted(
        f"one feature with these parameters takes about {one / 2**20:.1f} MiB with a "
        f"batch of {batch_positions} token positions; the compute service "
        f"plans for {usable / 2**20:.0f} MiB ({PLANNED_SHARE:.0%} of its memory budget)",
        field="params.n_quantile_groups",
        fix="lower n_quantile_groups, examples_per_quantile_group, n_top_examples, the "
        "context widths or batch_size (or raise MISTUDIO_COMPUTE_MEMORY_BUDGET_BYTES)",
    )
