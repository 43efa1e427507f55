"""The activation pass spread over a Ray cluster: token-range shards as Ray tasks, merged in a tree.

Each shard is ``run_activation_pass`` over a contiguous range of rows, run as a Ray task (retried
by Ray when its worker dies; a finished shard's state stays in the object store, so a retry of one
shard recomputes only that shard). Finished shards' states are also saved (``ShardStore``: by
the task itself in an object store every replica reaches, else by the driver beside the
checkpoint), so a restarted service, or another replica, re-attaches to them instead of
computing them again.
Shard states are merged pairwise in shard order; sums are exact integers, so the merged state
equals one pass's bit for bit whatever the shard count and the order tasks finish in.
Finalisation runs in the caller, where the merged state arrives.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from mistudio_common.errors import Cancelled, InvalidArgument, MistudioError

from mistudio_compute.dashboards.activation_pass import (
    Checkpointing,
    PassResult,
    run_activation_pass,
)
from mistudio_compute.dashboards.inputs import (
    CancelCheck,
    DashboardInputs,
    ProgressCallback,
    Stage,
)
from mistudio_compute.dashboards.params import validate_batch_size
from mistudio_compute.dashboards.shard_states import ShardFolder, ShardStore
from mistudio_compute.dashboards.state import PassState, StateConfig

if TYPE_CHECKING:
    import ray

InputsFactory = Callable[[], DashboardInputs]
"""Builds the inputs inside a Ray worker (models and locks are not shipped as live objects)."""

_log = logging.getLogger(__name__)

_WAIT_S = 0.2
"""How often the driver looks at the cancel flag while shards run."""
_STOP_WAIT_S = 30.0
"""How long a cancelled pass waits for Ray to report its running shards killed."""


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


@dataclass(frozen=True, slots=True)
class RayCluster:
    """Where and how a computation's passes run on Ray."""

    make_inputs: InputsFactory
    sharding: Sharding
    states: ShardStore | None = None
    """Where finished token shards are kept; None: a folder beside the pass checkpoint."""


@dataclass(frozen=True, slots=True)
class RayPass:
    """The pass of a feature shard as token-range shards on a Ray cluster (a PassRunner);
    finished shards are kept in the cluster's store, else beside ``checkpoint`` when one is
    given."""

    cluster: RayCluster
    config: StateConfig
    tokens_shape: tuple[int, ...]
    """[rows, seq_len] of the token source."""
    device: torch.device
    checkpoint: Checkpointing | None = None

    @property
    def states(self) -> ShardStore | None:
        if self.cluster.states is not None:
            return self.cluster.states
        if self.checkpoint is None:
            return None
        return ShardFolder(self.checkpoint.path.with_name(self.checkpoint.path.name + ".shards"))

    def run(
        self,
        features: torch.Tensor,
        batch_size: int,
        progress: ProgressCallback | None,
        cancel: CancelCheck | None,
    ) -> PassResult:
        rows, seq_len = self.tokens_shape[:2]
        return run_sharded_pass(
            self.cluster.make_inputs, self.config, features, rows=range(rows), seq_len=seq_len,
            device=self.device, sharding=self.cluster.sharding, batch_size=batch_size,
            progress=progress, cancel=cancel, saved=self.states,
        )  # fmt: skip

    def saved_features(self) -> torch.Tensor | None:
        return None if self.states is None else self.states.features()

    def keep(self, finished: PassResult) -> None:
        """Nothing to add: every token shard was kept as it finished, and a resumed pass merges
        them again without running one."""

    def discard(self) -> None:
        if self.states is not None:
            self.states.clear()


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
    keep: ShardStore | None,
) -> PassResult:
    """One shard's pass, saved in ``keep`` (a store this worker reaches) before it returns. A
    state that cannot be saved still serves this run: only a restart would compute it again."""
    result = run_activation_pass(make_inputs(), config, features, rows=rows, batch_size=batch_size)
    finished = PassResult(_to_cpu(result.state), result.batch_size)
    if keep is not None:
        try:
            keep.save(rows, finished)
        except MistudioError as error:
            _log.warning("rows %d-%d are not kept for a restart: %s", rows.start, rows.stop, error)
    return finished


@functools.cache
def _shard_task() -> Any:
    """One Ray function for the shards of every pass in this process: Ray queues the tasks of
    one function first in, first out, so with at most ``max_in_flight`` shards of a job in the
    queue, a job started later gets its turn before a big job's later shards. (Ray gives each
    ``ray.remote`` its own queue, scheduled in no promised order: one per pass would leave the
    order between jobs to chance.)"""
    import ray

    return ray.remote(_run_shard)


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
    saved: ShardStore | None = None,
) -> PassResult:
    """The pass over ``rows`` as Ray tasks on the Ray cluster; the merged state is returned on
    ``device``. Shards found in ``saved`` are not run again; those that finish are saved there.
    Progress counts the tokens of finished shards (monotonic). Cancelling cancels the running
    and queued shards and raises Cancelled."""
    import ray  # the optional ``ray`` extra: only a configured Ray address needs it

    validate_batch_size(batch_size)
    if not ray.is_initialized():
        ray.init(address=sharding.address, log_to_driver=False)
    if len(rows) == 0:
        return PassResult(PassState.empty(config, features, seq_len, device), batch_size)
    ranges = shard_ranges(rows, sharding.shards, batch_size)
    shard = _shard_task().options(
        num_cpus=sharding.cpus_per_task,
        num_gpus=sharding.gpus_per_task,
        max_retries=sharding.max_retries,
    )
    merge = ray.remote(num_cpus=0)(_merge)
    factory, cpu_features = ray.put(make_inputs), features.cpu().to(torch.int64)
    keep = saved if saved is not None and saved.shared else None

    states: list[ray.ObjectRef | None] = [None] * len(ranges)
    running: dict[ray.ObjectRef, int] = {}
    queued, done_tokens, total_tokens = [], 0, len(rows) * seq_len
    for i, shard_rows in enumerate(ranges):
        found = None if saved is None else saved.load(shard_rows, config, cpu_features)
        if found is None:
            queued.append(i)
        else:
            states[i], done_tokens = ray.put(found), done_tokens + len(shard_rows) * seq_len
    if done_tokens:
        reattached = len(ranges) - len(queued)
        _log.info(
            "re-attached to %d of %d token shards saved in %s", reattached, len(ranges),
            saved, extra={"reattached_shards": reattached},
        )  # fmt: skip
        if progress is not None:
            progress(Stage.ACTIVATION_PASS, done_tokens, total_tokens, "")
    try:
        while queued or running:
            while queued and len(running) < sharding.max_in_flight:
                i = queued.pop(0)
                ref = shard.remote(factory, config, cpu_features, ranges[i], batch_size, keep)
                states[i], running[ref] = ref, i
            ready, _ = ray.wait(list(running), num_returns=1, timeout=_WAIT_S)
            for ref in ready:
                i = running.pop(ref)
                if saved is not None and keep is None:
                    saved.save(ranges[i], ray.get(ref))
                rows_done = [ranges[i].start, ranges[i].stop]
                _log.info(
                    "computed token shard rows %d-%d", *rows_done, extra={"shard_rows": rows_done}
                )
                done_tokens += len(ranges[i]) * seq_len
                if progress is not None:
                    progress(Stage.ACTIVATION_PASS, done_tokens, total_tokens, "")
            if cancel is not None and cancel.is_set():
                raise Cancelled("the computation was cancelled")
    except BaseException:
        _stop(list(running))
        raise
    merged: PassResult = ray.get(_merge_tree([r for r in states if r is not None], merge))
    return PassResult(_on(merged.state, device), merged.batch_size)


def _stop(running: list[ray.ObjectRef]) -> None:
    """Kills the running shards' workers and waits until Ray reports each task ended, so a
    cancelled pass raises only once its kills are delivered (the processes may take a moment
    longer to exit)."""
    import ray

    for ref in running:
        ray.cancel(ref, force=True)
    if running:
        ray.wait(running, num_returns=len(running), timeout=_STOP_WAIT_S)


def _merge_tree(refs: list[ray.ObjectRef], merge: Any) -> ray.ObjectRef:
    """Pairwise merges, neighbours first: the same tree for the same shard count."""
    while len(refs) > 1:
        pairs = [merge.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
        refs = pairs + ([refs[-1]] if len(refs) % 2 else [])
    return refs[0]
