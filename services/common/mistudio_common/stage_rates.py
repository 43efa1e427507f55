"""What each stage of a job costs, from the work that drives it, fitted from finished jobs.

A stage's seconds are its rate times its cost driver. The activation pass runs the model to
the hook and updates every feature's state at every token (tokens × (features + the per-token
work in features' worth): on the bench the encoder's matmul is 2% of the pass, 0.64 s of 30 s,
so d_in does not drive it); the stages after it handle each feature's
shown examples (features × example tokens: finalisation builds them, and they are what sizes the
bytes written, validated and packed); checking a request is a fixed cost. A rate is fitted from
the stage times of finished jobs; until a stage has been measured, its prior stands in (the
bench's stage times, ``BENCH_SECONDS``).

A computation run in feature shards finalises every shard but the last inside its activation
pass stage (``mistudio_compute.dashboards.shards``): its predicted pass stage holds that share
of the finalisation, and its measured one is fitted with that share taken out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from time import thread_time

import orjson
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb

from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_options import computation_stages
from mistudio_common.progress import StageId

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobSize:
    """The quantities stage costs grow with."""

    tokens: int
    """Token positions the activation pass reads."""
    features: int
    """Features computed (or written, for the file stages)."""
    example_tokens: int
    """Tokens of one feature's shown examples: examples × context window."""
    shards: int = 1
    """Feature shards the computation runs in (equal but the last, as ``dashboards.memory``
    plans them)."""
    forwards: int = 1
    """Model forwards over the tokens: one, or one per shard where the shards do not keep the
    hook activations."""

    @property
    def last_shard_features(self) -> int:
        """Features of the last shard: the only ones finalised in the finalisation stages."""
        return self.features - (self.shards - 1) * -(-self.features // self.shards)

    @property
    def finalised_in_pass(self) -> float:
        """The share of the features whose finalisation runs inside the pass stage."""
        if self.shards <= 1 or self.features <= 0:
            return 0.0
        return 1.0 - self.last_shard_features / self.features


def example_tokens(params: dpb.DashboardParams | DashboardParams) -> int:
    """Tokens of one feature's shown examples under ``params`` (filled, not defaulted)."""
    examples = params.n_top_examples + params.n_quantile_groups * params.examples_per_quantile_group
    return examples * (params.context_left + 1 + params.context_right)


def cost_units(stage: StageId, size: JobSize) -> float:
    """The cost driver of ``stage`` for a job of ``size``: its seconds are proportional to it."""
    if stage == ppb.STAGE_ACTIVATION_PASS:
        return float(size.tokens) * (size.features + size.forwards * PASS_TOKEN_WORK_IN_FEATURES)
    if stage == ppb.STAGE_VALIDATING:
        return 1.0
    return float(size.features) * size.example_tokens


FINALISATION_STAGES = computation_stages(frozenset())[1:]
"""The stages after the pass that each feature shard runs for its own features."""
PASS_TOKEN_WORK_IN_FEATURES = 610
"""The pass's work per token that does not grow with the features (the model's forward to the
hook, the batch's bookkeeping), in features' worth: on the bench (232efc0, idle, one shard at
both sizes, the forwards read ahead on a thread of their own) the pass's wall grows from 4.65 s
at 4,096 features to 16.8 s at 16,384, a + 4,096 b to a + 16,384 b with a ≈ 610 b."""
BENCH_SIZE = JobSize(tokens=262_144, features=4_096, example_tokens=45 * 25)
"""The bench's default export the priors come from: stories260K, 2,048 rows of 128 tokens, a
4,096-feature SAE, 20 top and 5 × 5 quantile examples of 16 + 1 + 8 tokens."""
BENCH_SECONDS: dict[StageId, float] = {
    ppb.STAGE_VALIDATING: 0.06,
    ppb.STAGE_ACTIVATION_PASS: 2.98,
    ppb.STAGE_LOADING_EXAMPLES: 0.09,
    ppb.STAGE_LOGIT_LENS: 1.35,
    ppb.STAGE_HISTOGRAMS: 0.01,
    ppb.STAGE_TOKEN_AGGREGATION: 0.02,
    ppb.STAGE_CACHING: 0.03,
    ppb.STAGE_GENERATING_FILES: 2.87,
    ppb.STAGE_VALIDATING_OUTPUT: 1.04,
    ppb.STAGE_CREATING_ARCHIVE: 0.65,
}
"""Each stage's seconds in that export on the 2-core bench machine, idle: the mean of the two
runs of bench/results/latest.md at a0adccf (an AMD Zen 5; the export's wall from StartExport
9.9 and 10.5 s). The priors before them, fitted on a Zen 4 host at 232efc0, estimated the
first of those runs at x1.50: a prior holds for the machine it was measured on, so it is
scaled by ``machine_pace``. GENERATING_FILES is that run's 3.77 s times 0.76, what the writers'
changes of bc6ea00-69e63a4 (writers in turns, one parse, staging read ahead) took off the
stage on a Zen 4 host (alternated x3: 4.2 against 5.5 s)."""
PRIOR_SECONDS_PER_UNIT: dict[StageId, float] = {
    stage: seconds / cost_units(stage, BENCH_SIZE) for stage, seconds in BENCH_SECONDS.items()
}
"""Seconds per cost unit, on the bench machine, before any job of this service has measured
the stage."""
PROBE_SECONDS_ON_BENCH_MACHINE = 0.0025
"""``probe_seconds()`` on the machine ``BENCH_SECONDS`` were measured on (2.45-2.6 ms)."""
PACE_BOUNDS = (0.25, 4.0)
"""A probe off by more than this is taken as a fluke, not as the machine."""


def probe_seconds() -> float:
    """CPU seconds of a small piece of the work after the pass on this machine: a
    dashboard-shaped document (12,288 floats and short strings) built, serialised and parsed,
    the fastest of five (about 12 ms in all). It tracks the stages that dominate an export on
    a small machine, which are Python, orjson and small numpy calls, not the matmul rate."""
    best = float("inf")
    for _ in range(5):
        start = thread_time()
        document = [
            {
                "index": i,
                "values": [(i * 7919 + k) % 1000 / 997 for k in range(96)],
                "tokens": [f" tok{(i * 31 + k) % 512}" for k in range(96)],
            }
            for i in range(128)
        ]
        orjson.loads(orjson.dumps(document))
        best = min(best, thread_time() - start)
    return best


@cache
def machine_pace() -> float:
    """How much longer this machine takes than the bench machine of the priors (2.0: twice as
    long), probed once per process."""
    low, high = PACE_BOUNDS
    return min(high, max(low, probe_seconds() / PROBE_SECONDS_ON_BENCH_MACHINE))


@dataclass(frozen=True, slots=True)
class StageTime:
    """One measured stage of a finished job."""

    stage: StageId
    size: JobSize
    seconds: float


@dataclass(frozen=True, slots=True)
class StageEstimate:
    """One stage of a job's estimate (compute's and the export's): its predicted seconds."""

    stage: StageId
    seconds: float


@dataclass(frozen=True, slots=True)
class ShardCosts:
    """The work a sharded pass stage holds besides passing the features, each in features
    passed over every token: its count advances by them (``dashboards.shards``), so it
    advances evenly in time. Zero: counted as nothing."""

    finalising: float = 0.0
    """Finalising one feature."""
    forward: float = 0.0
    """The model forward over every token."""


NO_SHARD_COSTS = ShardCosts()
"""Nothing counted besides the features' passes (no predicted rates at hand)."""


@dataclass(frozen=True, slots=True)
class StageRates:
    """Seconds per cost unit of each stage: fitted where measured, the prior elsewhere."""

    seconds_per_unit: dict[StageId, float]
    measured: frozenset[StageId]

    @classmethod
    def fit(cls, times: Iterable[StageTime], pace: float = 1.0) -> StageRates:
        """Per stage, total seconds over total cost units: the least-squares rate of a cost
        proportional to its driver when a stage's time varies in proportion to its size, so a
        large job weighs as much as its size and small jobs' fixed overheads do not dominate.
        A stage never measured takes its prior times ``pace`` (``machine_pace()`` for this
        machine's estimates)."""
        seconds: dict[StageId, float] = {}
        units: dict[StageId, float] = {}
        for time in times:
            u = cost_units(time.stage, time.size)
            if u <= 0 or time.seconds < 0:
                continue
            seconds[time.stage] = seconds.get(time.stage, 0.0) + time.seconds
            units[time.stage] = units.get(time.stage, 0.0) + u
        fitted = {stage: seconds[stage] / units[stage] for stage in units}
        priors = {stage: pace * rate for stage, rate in PRIOR_SECONDS_PER_UNIT.items()}
        return cls({**priors, **fitted}, frozenset(fitted))

    def seconds(self, stage: StageId, size: JobSize) -> float:
        return self.seconds_per_unit.get(stage, 0.0) * cost_units(stage, size)

    def predict(self, stages: Sequence[StageId], size: JobSize) -> list[float]:
        """Predicted seconds of each of ``stages``: a job's estimate and its progress weights.
        In feature shards the pass stage takes the finalisation of all shards but the last."""
        predicted = [self.seconds(stage, size) for stage in stages]
        if ppb.STAGE_ACTIVATION_PASS not in stages:
            return predicted
        moved = [
            size.finalised_in_pass * seconds if stage in FINALISATION_STAGES else 0.0
            for stage, seconds in zip(stages, predicted, strict=True)
        ]
        predicted = [seconds - m for seconds, m in zip(predicted, moved, strict=True)]
        predicted[list(stages).index(ppb.STAGE_ACTIVATION_PASS)] += sum(moved)
        return predicted

    def shard_costs(self, stages: Sequence[StageId], size: JobSize) -> ShardCosts:
        """What a sharded pass stage holds besides the features' passes, predicted."""
        passing = self.seconds_per_unit.get(ppb.STAGE_ACTIVATION_PASS, 0.0) * size.tokens
        final = sum(self.seconds_per_unit.get(s, 0.0) for s in stages if s in FINALISATION_STAGES)
        finalising = final * size.example_tokens / passing if passing > 0 else 0.0
        return ShardCosts(finalising=finalising, forward=PASS_TOKEN_WORK_IN_FEATURES)

    def all_measured(self, stages: Sequence[StageId]) -> bool:
        return all(stage in self.measured for stage in stages)


RECENT_PER_STAGE = 20
"""Measurements kept per stage: recent jobs follow a changed machine or a faster release."""


@dataclass(frozen=True, slots=True)
class RateFile:
    """Stage times of this service's finished jobs, in one JSON file (replaced atomically)."""

    path: Path

    def times(self) -> list[StageTime]:
        try:
            rows = orjson.loads(self.path.read_bytes())
            return [
                StageTime(
                    ppb.Stage.ValueType(r["stage"]), JobSize(**r["size"]), float(r["seconds"])
                )
                for r in rows
            ]
        except FileNotFoundError:
            return []
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            log.warning(
                "ignoring an unreadable rates file; estimates use the priors",
                extra={"path": str(self.path), "error": str(error)},
            )
            return []

    def rates(self) -> StageRates:
        return StageRates.fit(self.times(), machine_pace())

    def record(self, measured: Iterable[StageTime]) -> None:
        """Adds a finished job's stage times, keeping the most recent RECENT_PER_STAGE each."""
        times = [*self.times(), *measured]
        kept: list[StageTime] = []
        count: dict[StageId, int] = {}
        for time in reversed(times):
            count[time.stage] = count.get(time.stage, 0) + 1
            if count[time.stage] <= RECENT_PER_STAGE:
                kept.append(time)
        kept.reverse()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps([asdict(t) for t in kept]))
        os.replace(temporary, self.path)


def stage_times(progress: ppb.Progress, size: JobSize) -> list[StageTime]:
    """The measured stages of a finished job's progress, each sized by the work it timed: in
    feature shards, the finalisation stages timed the last shard's features, and the pass
    stage is fitted less the earlier shards' finalisation at the last shard's measured pace
    (left out when that leaves nothing)."""
    measured = [
        (s.stage, s.elapsed_seconds)
        for s in progress.stages
        if s.state == ppb.JOB_STATE_SUCCEEDED and s.elapsed_seconds > 0
    ]
    if size.shards <= 1:
        return [StageTime(stage, size, seconds) for stage, seconds in measured]
    last = replace(size, features=size.last_shard_features, shards=1, forwards=1)
    final = sum(seconds for stage, seconds in measured if stage in FINALISATION_STAGES)
    earlier = final * (size.features - last.features) / last.features
    times = []
    for stage, seconds in measured:
        if stage in FINALISATION_STAGES:
            times.append(StageTime(stage, last, seconds))
        elif stage != ppb.STAGE_ACTIVATION_PASS:
            times.append(StageTime(stage, size, seconds))
        elif seconds > earlier:
            times.append(StageTime(stage, size, seconds - earlier))
    return times
