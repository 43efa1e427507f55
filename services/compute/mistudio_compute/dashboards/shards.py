"""Feature shards: the computation in contiguous feature ranges, so that its peak memory is
bounded by a budget rather than by d_sae.

Each shard runs the whole pass over all tokens for its features, finalises them and hands their
dashboards on before the next shard starts; the model forward is repeated once per shard unless
the runner keeps the hook activations between shards (``kept_activations``). Every
per-feature statistic depends only on that feature's activations, so the dashboards equal those
of one unsharded run. The checkpoint holds the running shard's state: a resumed computation
starts again at that shard and batch (earlier shards are finished and were handed on). The
shard size comes from ``memory.plan_within_budget``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import DashboardParams

from mistudio_compute.dashboards.activation_pass import PassResult, PassRunner
from mistudio_compute.dashboards.finalize import finalize_dashboards
from mistudio_compute.dashboards.inputs import (
    CancelCheck,
    DashboardInputs,
    ProgressCallback,
    Stage,
)
from mistudio_compute.dashboards.kept_activations import KeptActivations


@dataclass
class ShardedComputation:
    """Dashboards of ``features`` in ascending order, ``chunk_size`` per yielded list, computed
    in shards of at most ``shard_size`` features. ``batch_size`` is the batch size in use (it
    shrinks after out-of-memory and carries over to the next shard). ``kept``: the hook
    activations the runner keeps between shards, dropped once the last shard's pass is done."""

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
    kept: KeptActivations | None = None

    def __iter__(self) -> Iterator[list[dpb.FeatureDashboard]]:
        shards = self._shards()
        for index, (lo, hi) in enumerate(shards):
            if index > 0:  # the previous shard is handed on
                self.runner.discard()
            report = _ShardProgress(self.progress, index, len(shards), lo, len(self.features))
            passed = self.runner.run(self.features[lo:hi], self.batch_size, report, self.cancel)
            self.batch_size = passed.batch_size
            if self.kept is not None and index == len(shards) - 1:
                self.kept.clear()
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
            note = f"feature shard {self.index + 1} of {self.n_shards}"
            message = f"{note}: {message}" if message else note
        if stage is Stage.ACTIVATION_PASS:
            self.progress(stage, self.index * total + done, self.n_shards * total, message)
        elif last and stage is Stage.LOADING_EXAMPLES:
            self.progress(stage, done, total, message)
        elif last:
            self.progress(stage, self.first_feature + done, self.n_features, message)
        # an earlier shard's finalisation reports nothing: the pass stays at that shard's end
