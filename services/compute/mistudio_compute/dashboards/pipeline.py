"""The entry point: validate, stream over the tokens (once per feature shard), then emit
dashboards in chunks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.stage_rates import NO_SHARD_COSTS, ShardCosts

from mistudio_compute.dashboards.activation_pass import Checkpointing, LocalPass, PassResult
from mistudio_compute.dashboards.distributed import RayCluster, RayPass
from mistudio_compute.dashboards.inputs import CancelCheck, DashboardInputs, ProgressCallback
from mistudio_compute.dashboards.kept_activations import KeptActivations
from mistudio_compute.dashboards.memory import plan_within_budget
from mistudio_compute.dashboards.params import (
    state_config,
    validate_batch_size,
    validate_features,
    validate_params,
    validate_tokens,
)
from mistudio_compute.dashboards.shards import ShardedComputation


def compute_dashboards(
    inputs: DashboardInputs,
    params: DashboardParams,
    *,
    features: Sequence[int] | None = None,
    batch_size: int = 32,
    chunk_size: int = 256,
    checkpoint: Checkpointing | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    memory_budget: int | None = None,
    on_pass: Callable[[PassResult], None] | None = None,
    ray: RayCluster | None = None,
    costs: ShardCosts = NO_SHARD_COSTS,
) -> Iterator[list[dpb.FeatureDashboard]]:
    """Dashboards of ``features`` (default: all), in ascending feature order, ``chunk_size`` per
    yielded list. With ``memory_budget`` (bytes beyond the model and SAE) the work runs in
    feature shards, and batches of at most ``batch_size`` rows, that fit it. Arguments are
    validated now; the work runs as the iterator is consumed. ``on_pass`` receives each
    shard's activation pass result (e.g. the batch size it ended with). With ``ray`` each
    feature shard's pass runs as token-range shards on that cluster (finished ones saved next to
    ``checkpoint``); finalisation stays here. Without ray, several shards keep the hook
    activations between their passes when the plan has room for them (one model forward).
    ``costs`` (the predicted finalisation and model forward) let the pass stage's count cover
    the earlier shards' finalisation and the forwards evenly in time."""
    validate_params(params)
    validate_batch_size(batch_size)
    feats = validate_features(features, inputs.encoder.d_sae)
    config = state_config(params, inputs.token_text.special_ids)
    tokens = inputs.source.tokens
    validate_tokens(tokens, range(len(tokens)))  # its shape sizes the plan

    plan = plan_within_budget(
        params, config, len(feats), batch_rows=batch_size,
        seq_len=tokens.shape[1], n_rows=tokens.shape[0],
        chunk_size=chunk_size, budget=memory_budget,
        hook_width=inputs.encoder.d_in if ray is None else 0,  # Ray workers run the forward
    )  # fmt: skip
    kept = KeptActivations(tokens.shape[0]) if plan.kept_bytes else None
    runner = (
        LocalPass(inputs, config, checkpoint, kept)
        if ray is None
        else RayPass(ray, config, tokens.shape, inputs.encoder.device, checkpoint)
    )
    computation = ShardedComputation(
        inputs, params, runner, feats, plan.shard_size, plan.batch_rows,
        chunk_size=chunk_size, progress=progress, cancel=cancel, on_pass=on_pass, kept=kept,
        costs=costs,
    )  # fmt: skip
    return iter(computation)
