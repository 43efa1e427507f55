"""Feature shards: the computation in contiguous feature ranges, so that its peak memory is
bounded by a budget rather than by d_sae.

Each shard runs the whole pass over all tokens for its features, finalises them and hands their
dashboards on before the next shard starts; the model forward is repeated once per shard unless
the runner keeps the hook activations between shards (``kept_activations``). Every
per-feature statistic depends only on that feature's activations, so the dashboards equal those
of one unsharded run. The checkpoint holds the running shard's state: a resumed computation
starts again at that shard and batch, or at its finalisation when it was interrupted there
(earlier shards are finished and were handed on). The shard size comes from
``memory.plan_within_budget``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import Cancelled
from mistudio_common.stage_rates import NO_SHARD_COSTS, ShardCosts

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
    activations the runner keeps between shards, dropped once the last shard's pass is done.
    ``costs``: what the pass stage's count advances by besides the features' passes
    (``PassCount``)."""

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
    costs: ShardCosts = NO_SHARD_COSTS

    def __iter__(self) -> Iterator[list[dpb.FeatureDashboard]]:
        shards = self._shards()
        count = PassCount.of(shards, self.costs, forward_each=self.kept is None)
        for index, (lo, hi) in enumerate(shards):
            if index > 0:  # the previous shard is handed on
                self.runner.discard()
            report = ShardProgress(self.progress, index, len(shards), lo, len(self.features), count)
            passed = self.runner.run(self.features[lo:hi], self.batch_size, report, self.cancel)
            self.batch_size = passed.batch_size
            if self.kept is not None and index == len(shards) - 1:
                self.kept.clear()
            if self.on_pass is not None:
                self.on_pass(passed)
            try:
                yield from finalize_dashboards(
                    passed.state, self.inputs, self.params,
                    chunk_size=self.chunk_size, progress=report, cancel=self.cancel,
                )  # fmt: skip
            except Cancelled:  # a pause resumes at this shard's finalisation, not its pass
                self.runner.keep(passed)
                raise
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
    the resident set follows the running shard rather than the largest ever. Its state is freed
    as its last reference goes, without a garbage collection: a full one walks every object of
    the process, 0.29-0.31 CPU s a shard with stories260K loaded (472,000 objects), and freed
    nothing there (10 objects, the same resident set; the trim gave back 68 MB in 3 ms)."""
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


@dataclass(slots=True)
class PassCount:
    """The pass stage's count over the shards, in tokens of a mean shard's pass (``shards``
    times the tokens in all): each shard's pass, with its model forward, and its finalisation
    (all shards' but the last) count as the tokens' worth of time they are predicted to take,
    so that the count advances evenly in time and the stage's own rate predicts the rest."""

    spans: tuple[tuple[float, float], ...]
    """Per shard: its pass and its finalisation, in mean shards' passes."""
    tokens: int = 0
    """Tokens of one shard's pass, as its first report counts them."""
    chunk: tuple[int, int] = (0, 0)
    """(features finalised, features once the chunk under way is) of the shard finalising: a
    chunk reports its end as it begins, so only the chunks before it count as done."""

    @classmethod
    def of(
        cls, shards: Sequence[tuple[int, int]], costs: ShardCosts, *, forward_each: bool
    ) -> PassCount:
        """For feature ranges ``shards``; the first runs the model forward, the others too with
        ``forward_each`` (no kept activations)."""
        passes = [
            hi - lo + (costs.forward if index == 0 or forward_each else 0.0)
            for index, (lo, hi) in enumerate(shards)
        ]
        finalising = [costs.finalising * (hi - lo) for lo, hi in shards[:-1]] + [0.0]
        mean = sum(passes) / len(passes)
        return cls(tuple((p / mean, f / mean) for p, f in zip(passes, finalising, strict=True)))

    def finalised(self, done: int) -> int:
        """Features of the finalising shard done, at a report of ``done``."""
        if done != self.chunk[1]:
            self.chunk = (self.chunk[1], done)
        return self.chunk[0]

    def at(self, index: int, part: float) -> tuple[int, int]:
        """(done, total) at ``part`` whole shards' passes into shard ``index``'s spans."""
        before = sum(p + f for p, f in self.spans[:index])
        total = sum(p + f for p, f in self.spans)
        return round(self.tokens * (before + part)), round(self.tokens * total)


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """One shard's progress as part of the whole, so that the job's stages and counts never go
    backwards: the pass stage counts every shard's pass and the finalisation of all but the
    last (``PassCount``); the finalisation stages appear only in the last shard and count every
    feature."""

    progress: ProgressCallback | None
    index: int
    n_shards: int
    first_feature: int
    n_features: int
    count: PassCount

    def __call__(self, stage: Stage, done: int, total: int, message: str) -> None:
        progress = self.progress
        if progress is None:
            return
        last = self.index == self.n_shards - 1
        note = ""
        if self.n_shards > 1:
            note = f"feature shard {self.index + 1} of {self.n_shards}"
            message = f"{note}: {message}" if message else note
        passing, finalising = self.count.spans[self.index]
        if stage is Stage.ACTIVATION_PASS:
            self.count.tokens, self.count.chunk = total, (0, 0)
            part = passing * done / total if total else 0.0
            progress(stage, *self.count.at(self.index, part), message)
        elif last and stage is Stage.LOADING_EXAMPLES:
            progress(stage, done, total, message)
        elif last:
            progress(stage, self.first_feature + done, self.n_features, message)
        elif stage is not Stage.LOADING_EXAMPLES:  # features of an earlier shard finalised
            part = passing + finalising * self.count.finalised(done) / total
            progress(Stage.ACTIVATION_PASS, *self.count.at(self.index, part), f"{note}: finalising")
