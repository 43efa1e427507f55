"""Runs the streaming dashboard computation for one prepared job and reports back to it.

The computation (``mistudio_compute.dashboards``) reports progress per batch and per chunk of
features; this module turns that into the job's stage sequence, hands every finalised chunk to
the job (which caches it in the store) and measures what the ComputeResult reports.
"""

from __future__ import annotations

import functools
import resource
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_options import Component, computation_stages
from mistudio_common.stage_rates import JobSize, example_tokens

from mistudio_compute.adapters import DatasetTokens, dashboard_inputs
from mistudio_compute.dashboards import (
    Checkpointing,
    Stage,
    compute_dashboards,
)
from mistudio_compute.dashboards.distributed import RayCluster, Sharding
from mistudio_compute.dashboards.memory import ShardPlan
from mistudio_compute.dashboards.shard_states import ShardStore
from mistudio_compute.jobs import RunHooks, RunStats
from mistudio_compute.model_access import LoadedModel
from mistudio_compute.sae_source import ResolvedSae
from mistudio_compute.tokens import TokenDataset

CHECKPOINT_FILE = "pass.safetensors"
CHUNK_FEATURES = 256
"""Features finalised (and written to the store) together."""

_PASS_STAGES = {
    Stage.ACTIVATION_PASS: (ppb.STAGE_ACTIVATION_PASS, "tokens"),
    Stage.LOADING_EXAMPLES: (ppb.STAGE_LOADING_EXAMPLES, "rows"),
}
_PROTO_PASS_STAGES = {proto for proto, _ in _PASS_STAGES.values()}
_STAGES_BY_NAME = {stage: ppb.Stage.Value(f"STAGE_{stage.name}") for stage in Stage}


@dataclass(frozen=True)
class PreparedDashboards:
    """A validated ComputeDashboards request with everything loaded (a PreparedComputation)."""

    sae_id: str
    sae_owner: str
    params: DashboardParams
    """The request's, filled in: with the token source's fingerprint and, where the hook has no
    logit lens, that left out."""
    feature_indices: Sequence[int]
    resolved: ResolvedSae
    model: LoadedModel
    model_lock: threading.Lock
    dataset: TokenDataset
    batch_rows: int
    checkpoint_every_seconds: float
    memory_budget: int
    """Bytes the computation may take beyond the model and the SAE (it shards features to fit)."""
    shard_plan: Callable[[int], ShardPlan]
    """The feature shards a computation of that many of the features runs in, as it will plan
    them (``planning.plan_shards``)."""
    sharding: Sharding | None = None
    """Set when a Ray address is configured: the pass then runs as shards on that cluster."""

    def run(self, features: Sequence[int], hooks: RunHooks) -> RunStats:
        return run_dashboards(self, features, hooks)

    def size(self, features: int) -> JobSize:
        return job_size(self.dataset.n_tokens, features, self.params, self.shard_plan(features))


def job_size(tokens: int, features: int, params: DashboardParams, memory: ShardPlan) -> JobSize:
    """What the stage costs of computing ``features`` grow with, in the shards they run in."""
    return JobSize(tokens, features, example_tokens(params), memory.shards, memory.forwards)


class StageReporter:
    """Maps the computation's progress onto the job's sequential stages.

    Finalisation runs logit lens, histograms and token aggregation together, chunk by chunk;
    the job shows that as the first of them counting finished features (from the first chunk's
    start), then the others closing, so stages never go backwards. Parts left out have no stage.
    """

    def __init__(self, hooks: RunHooks, omitted: frozenset[Component]) -> None:
        self._report = hooks.progress
        self._finalised = 0
        self._final = [s for s in computation_stages(omitted) if s not in _PROTO_PASS_STAGES]

    def __call__(self, stage: Stage, done: int, total: int, message: str) -> None:
        if stage in _PASS_STAGES:
            proto_stage, unit = _PASS_STAGES[stage]
            self._report(proto_stage, done, total, unit, message)
            return
        if _STAGES_BY_NAME[stage] == self._final[-1]:  # a chunk's last step: its features are final
            self._finalised = done
        if self._finalised < total:
            self._report(self._final[0], self._finalised, total, "features", message)
        else:
            for proto_stage in self._final:
                self._report(proto_stage, total, total, "features", message)


def run_dashboards(
    prepared: PreparedDashboards, features: Sequence[int], hooks: RunHooks
) -> RunStats:
    """Pass, then finalisation chunk by chunk, in feature shards that fit the memory budget;
    raises Cancelled when ``hooks.interrupt`` is set."""
    params = prepared.params
    dataset = prepared.dataset
    inputs = dashboard_inputs(
        prepared.model,
        prepared.resolved.sae,
        prepared.resolved.hook_point,
        DatasetTokens(dataset),
        prepared.model_lock,
    )
    device = inputs.encoder.device
    reporter = StageReporter(hooks, params.omitted)
    batch_sizes: list[int] = []  # not the passes: each holds its shard's whole state
    chunks = compute_dashboards(
        inputs,
        params,
        features=features,
        batch_size=prepared.batch_rows,
        chunk_size=CHUNK_FEATURES,
        checkpoint=Checkpointing(
            hooks.checkpoint_dir / CHECKPOINT_FILE, prepared.checkpoint_every_seconds
        ),
        progress=reporter,
        cancel=hooks.interrupt,
        memory_budget=prepared.memory_budget,
        on_pass=lambda passed: batch_sizes.append(passed.batch_size),
        ray=(
            None
            if prepared.sharding is None
            else _ray_cluster(prepared, prepared.sharding, hooks.shard_states)
        ),
        costs=hooks.shard_costs,
    )
    for chunk in chunks:
        hooks.on_finalised(chunk)
    return RunStats(
        tokens_processed=dataset.n_tokens,
        final_batch_size=batch_sizes[-1],
        device=str(device),
        peak_memory_mb=_peak_memory_mb(device),
    )


def _ray_cluster(
    prepared: PreparedDashboards, sharding: Sharding, states: ShardStore | None
) -> RayCluster:
    """Each Ray worker builds its own inputs (the local model lock guards this process only)."""
    make_inputs = functools.partial(
        dashboard_inputs,
        prepared.model,
        prepared.resolved.sae,
        prepared.resolved.hook_point,
        DatasetTokens(prepared.dataset),
    )
    return RayCluster(make_inputs, sharding, states)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA; the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
