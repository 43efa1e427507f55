"""Feature shards: the computation in contiguous feature ranges, so that its peak memory is
bounded by a budget rather than by d_sae.

Each shard runs the whole pass over all tokens for its features, finalises them and hands their
dashboards on before the next shard starts; the model forward is repeated once per shard. Every
per-feature statistic depends only on that feature's activations, so the dashboards equal those
of one unsharded run. The checkpoint holds the running shard's state: a resumed computation
starts again at that shard and batch (earlier shards are finished and were handed on).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from mistudio_common.dashboard import DashboardParams, FeatureDashboard
from mistudio_common.errors import ResourceExhausted

from mistudio_compute.dashboards.activation_pass import PassResult, PassRunner
from mistudio_compute.dashboards.finalize import finalize_dashboards
from mistudio_compute.dashboards.inputs import (
    CancelCheck,
    DashboardInputs,
    ProgressCallback,
    Stage,
)
from mistudio_compute.dashboards.params import quantile_groups
from mistudio_compute.dashboards.state import PassState, StateConfig

STATE_COPIES = 2.4
"""Peak bytes per byte of pass state: the state, the candidate rows a batch folds in, and the
example plan finalisation builds from it."""
BYTES_PER_SHOWN_TOKEN = 90
"""Finalised dashboards are Python objects: about this much per token of each shown example's
window (its string, value and list slots). Two chunks are alive at once: the one being handed
on and the one being built."""
BATCH_COPIES = 3
"""Dense feature activations of one batch, the shard's column selection and the encoder's
pre-activations."""


@dataclass(frozen=True, slots=True)
class MemoryModel:
    """Predicted peak bytes of a computation beyond the model and the SAE weights; fitted on
    CPU measurements (tests/compute/dashboards/test_shards.py holds it within 30% of a measured
    peak)."""

    per_feature: int
    """Pass state of one feature (and its copies), whatever the number of tokens."""
    per_dashboard: int
    """One finalised dashboard while its chunk is handed on."""
    per_batch_position: int
    """Working set of one token position of a batch (its activations for every feature)."""

    @classmethod
    def of(
        cls, params: DashboardParams, config: StateConfig, d_sae: int, positions: int
    ) -> MemoryModel:
        """For a pass over ``positions`` token positions (they size the state's counts)."""
        shown = config.n_top + quantile_groups(params) * params.examples_per_quantile_group
        return cls(
            per_feature=math.ceil(PassState.bytes_per_feature(config, positions) * STATE_COPIES),
            per_dashboard=shown * config.width * BYTES_PER_SHOWN_TOKEN,
            per_batch_position=d_sae * 4 * BATCH_COPIES,
        )

    def peak(self, shard_size: int, batch_positions: int, chunk_size: int) -> int:
        """Peak bytes while a shard of ``shard_size`` features runs."""
        return (
            self.per_feature * shard_size
            + 2 * self.per_dashboard * min(chunk_size, shard_size)
            + self.per_batch_position * batch_positions
        )


def plan_shards(
    n_features: int, model: MemoryModel, batch_positions: int, chunk_size: int, budget: int
) -> int:
    """Features per shard: as many as fit in ``budget`` (all when they fit)."""
    chunks = 2 * model.per_dashboard * min(chunk_size, n_features)
    fixed = model.peak(0, batch_positions, 0) + chunks
    fitting = (budget - fixed) // model.per_feature
    if fitting < 1:
        raise ResourceExhausted(
            f"the memory budget of {budget / 2**20:.0f} MiB leaves no room for one feature "
            f"beside a batch of {batch_positions} token positions and a chunk of "
            f"{chunk_size} dashboards ({fixed / 2**20:.0f} MiB)",
            field="memory_budget_bytes",
            fix="raise MISTUDIO_COMPUTE_MEMORY_BUDGET_BYTES or lower the batch size",
        )
    return min(n_features, fitting)


@dataclass(frozen=True, slots=True)
class ShardPlan:
    shard_size: int
    """Features per shard."""
    batch_rows: int
    """Token rows per batch: as asked, or halved until one batch takes at most half the budget."""


def plan_within_budget(
    params: DashboardParams,
    config: StateConfig,
    d_sae: int,
    n_features: int,
    *,
    batch_rows: int,
    seq_len: int,
    n_rows: int,
    chunk_size: int,
    budget: int | None,
) -> ShardPlan:
    """Shard size and batch rows for ``budget`` bytes (no budget: one shard, rows as asked)."""
    if budget is None:
        return ShardPlan(max(1, n_features), batch_rows)
    model = MemoryModel.of(params, config, d_sae, n_rows * seq_len)
    while batch_rows > 1 and model.per_batch_position * batch_rows * seq_len > budget // 2:
        batch_rows //= 2
    size = plan_shards(n_features, model, batch_rows * seq_len, chunk_size, budget)
    return ShardPlan(size, batch_rows)


@dataclass
class ShardedComputation:
    """Dashboards of ``features`` in ascending order, ``chunk_size`` per yielded list, computed
    in shards of at most ``shard_size`` features. ``batch_size`` is the batch size in use (it
    shrinks after out-of-memory and carries over to the next shard)."""

    inputs: DashboardInputs
    params: DashboardParams
    runner: PassRunner
    features: torch.Tensor
    shard_size: int
    batch_size: int
    chunk_size: int = 256
    progress: ProgressCallback | None = None
    cancel: CancelCheck | None = None
    on_pass: Callable[[PassResult], None] | None = None

    def __iter__(self) -> Iterator[list[FeatureDashboard]]:
        shards = self._shards()
        for index, (lo, hi) in enumerate(shards):
            if index > 0:  # the previous shard is handed on
                self.runner.discard()
            report = _ShardProgress(self.progress, index, len(shards), lo, len(self.features))
            passed = self.runner.run(self.features[lo:hi], self.batch_size, report, self.cancel)
            self.batch_size = passed.batch_size
            if self.on_pass is not None:
                self.on_pass(passed)
            yield from finalize_dashboards(
                passed.state, self.inputs, self.params,
                chunk_size=self.chunk_size, progress=report, cancel=self.cancel,
            )  # fmt: skip
            del passed  # the next shard's state replaces this one, not joins it
            _return_freed_memory()

    def _shards(self) -> list[tuple[int, int]]:
        """Feature ranges [lo, hi) still to run: from the checkpointed shard when it is one of
        this computation's (so a changed budget still resumes), else from the start."""
        start, first = 0, []
        saved = self.runner.saved_features()
        if saved is not None:
            at = _find_run(self.features.cpu(), saved)
            if at is not None:
                first, start = [(at, at + len(saved))], at + len(saved)
        n, size = len(self.features), self.shard_size
        return first + [(lo, min(n, lo + size)) for lo in range(start, n, size)]


def _return_freed_memory() -> None:
    """Hands the finished shard's freed heap back to the system (glibc keeps it otherwise), so
    the resident set follows the running shard rather than the largest ever."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def _find_run(features: torch.Tensor, run: torch.Tensor) -> int | None:
    """Where ``run`` occurs as a contiguous part of the ascending ``features``, if it does."""
    if len(run) == 0:
        return None
    at = int(torch.searchsorted(features, run[:1]))
    if at + len(run) <= len(features) and torch.equal(features[at : at + len(run)], run):
        return at
    return None


@dataclass(frozen=True, slots=True)
class _ShardProgress:
    """One shard's progress as part of the whole: the pass advances over shards (tokens x
    shards), finalisation stages appear only in the last shard and count every feature, so the
    job's stages and counts never go backwards."""

    progress: ProgressCallback | None
    index: int
    n_shards: int
    first_feature: int
    n_features: int

    def __call__(self, stage: Stage, done: int, total: int, message: str) -> None:
        if self.progress is None:
            return
        last = self.index == self.n_shards - 1
        note = ""
        if self.n_shards > 1:
            note = f"feature shard {self.index + 1} of {self.n_shards} (one model pass each)"
            message = f"{note}: {message}" if message else note
        if stage is Stage.ACTIVATION_PASS:
            self.progress(stage, self.index * total + done, self.n_shards * total, message)
        elif last and stage is Stage.LOADING_EXAMPLES:
            self.progress(stage, done, total, message)
        elif last:
            self.progress(stage, self.first_feature + done, self.n_features, message)
        # an earlier shard's finalisation reports nothing: the pass stays at that shard's end
