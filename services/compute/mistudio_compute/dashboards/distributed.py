"""The activation pass spread over a Ray cluster: token-range shards as Ray tasks, merged in a tree.

Each shard is ``run_activation_pass`` over a contiguous range of rows, run as a Ray task (retried
by Ray when its worker dies; a finished shard's state stays in the object store, so a retry of one
shard recomputes only that shard). Shard states are merged pairwise in shard order, always the
same tree whatever the order tasks finish in, so the result does not depend on scheduling.
Finalisation runs in the caller, where the merged state arrives.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from mistudio_common.errors import Cancelled, InvalidArgument

from mistudio_compute.dashboards.activation_pass import PassResult, run_activation_pass
from mistudio_compute.dashboards.inputs import (
    CancelCheck,
    DashboardInputs,
    ProgressCallback,
    Stage,
)
from mistudio_compute.dashboards.params import validate_batch_size
from mistudio_compute.dashboards.state import PassState, StateConfig

if TYPE_CHECKING:
    import ray

InputsFactory = Callable[[], DashboardInputs]
"""Builds the inputs inside a Ray worker (models and locks are not shipped as live objects)."""

_WAIT_S = 0.2
"""How often the driver looks at the cancel flag while shards run."""


@dataclass(frozen=True, slots=True)
class Sharding:
    """How one computation is split over the cluster (the compute service's ``ray_*`` settings)."""

    address: str
    """The Ray cluster to join when this process has not joined one yet."""
    shards: int = 8
    """Token-range shards per computation (fewer when there are fewer rows)."""
    max_in_flight: int = 4
    """Shards of one computation running at once, so one big job cannot starve the others."""
    gpus_per_task: float = 0.0
    cpus_per_task: float = 1.0
    max_retries: int = 3
    """Re-runs of a shard whose worker process died."""

    def __post_init__(self) -> None:
        for name in ("shards", "max_in_flight"):
            if getattr(self, name) < 1:
                raise InvalidArgument(
                    f"{name} is {getattr(self, name)}", field=f"ray_{name}", fix="use 1 or more"
                )


def shard_ranges(rows: range, shards: int, batch_size: int) -> list[range]:
    """``rows`` cut into at most ``shards`` contiguous, non-empty ranges of near-equal size,
    cut only between the batches of an unsharded pass, so each shard folds exactly the batches
    that pass would (the same model inputs, the same kernels, the same bits)."""
    batches = -(-len(rows) // batch_size)
    n = min(shards, batches)
    bounds = [min(rows.stop, rows.start + batch_size * (batches * i // n)) for i in range(n + 1)]
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


def _to_cpu(state: PassState) -> PassState:
    """The state with every tensor on the CPU, to travel through the object store."""
    return _on(state, torch.device("cpu"))


def _on(state: PassState, device: torch.device) -> PassState:
    tensors = {k: v.to(device) for k, v in state.tensors().items()}
    return PassState.from_tensors(state.config, state.seq_len, state.token_count, tensors)


def _run_shard(
    make_inputs: InputsFactory,
    config: StateConfig,
    features: torch.Tensor,
    rows: range,
    batch_size: int,
) -> PassResult:
    result = run_activation_pass(make_inputs(), config, features, rows=rows, batch_size=batch_size)
    return PassResult(_to_cpu(result.state), result.batch_size)


def _merge(a: PassResult, b: PassResult) -> PassResult:
    return PassResult(a.state.merge(b.state), min(a.batch_size, b.batch_size))


def run_sharded_pass(
    make_inputs: InputsFactory,
    config: StateConfig,
    features: torch.Tensor,
    *,
    rows: range,
    seq_len: int,
    device: torch.device,
    sharding: Sharding,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> PassResult:
    """The pass over ``rows`` as Ray tasks on the Ray cluster; the merged
    state is returned on ``device``. Progress counts the tokens of finished shards (monotonic).
    Cancelling cancels the running and queued shards and raises Cancelled."""
    import ray  # the optional ``ray`` extra: only a configured Ray address needs it

    validate_batch_size(batch_size)
    if not ray.is_initialized():
        ray.init(address=sharding.address, log_to_driver=False)
    if len(rows) == 0:
        return PassResult(PassState.empty(config, features, seq_len, device), batch_size)
    ranges = shard_ranges(rows, sharding.shards, batch_size)
    shard = ray.remote(
        num_cpus=sharding.cpus_per_task,
        num_gpus=sharding.gpus_per_task,
        max_retries=sharding.max_retries,
    )(_run_shard)
    merge = ray.remote(num_cpus=0)(_merge)
    factory, cpu_features = ray.put(make_inputs), features.cpu()

    states: list[ray.ObjectRef | None] = [None] * len(ranges)
    running: dict[ray.ObjectRef, int] = {}
    queued = list(range(len(ranges)))
    done_tokens, total_tokens = 0, len(rows) * seq_len
    try:
        while queued or running:
            while queued and len(running) < sharding.max_in_flight:
                i = queued.pop(0)
                ref = shard.remote(factory, config, cpu_features, ranges[i], batch_size)
                states[i], running[ref] = ref, i
            ready, _ = ray.wait(list(running), num_returns=1, timeout=_WAIT_S)
            for ref in ready:
                i = running.pop(ref)
                done_tokens += len(ranges[i]) * seq_len
                if progress is not None:
                    progress(Stage.ACTIVATION_PASS, done_tokens, total_tokens, "")
            if cancel is not None and cancel.is_set():
                raise Cancelled("the computation was cancelled")
    except BaseException:
        for ref in (r for r in states if r is not None):
            ray.cancel(ref, force=True)
        raise
    merged: PassResult = ray.get(_merge_tree([r for r in states if r is not None], merge))
    return PassResult(_on(merged.state, device), merged.batch_size)


def _merge_tree(refs: list[ray.ObjectRef], merge: Any) -> ray.ObjectRef:
    """Pairwise merges, neighbours first: the same tree for the same shard count."""
    while len(refs) > 1:
        pairs = [merge.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
        refs = pairs + ([refs[-1]] if len(refs) % 2 else [])
    return refs[0]
