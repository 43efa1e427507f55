"""The running ETA of an export whose computation runs in feature shards: the progress stream a
sharded computation reports (``ShardProgress`` through the job's ``StageReporter``), replayed
on a clock into an export's tracker weighed as the export weighs it, stays within 30% of the
time actually left."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as pb
from mistudio_common import stage_rates
from mistudio_common.dashboard import DashboardParams
from mistudio_common.jobs.control import JobControl
from mistudio_common.progress import ProgressTracker, StageId
from mistudio_common.stage_rates import (
    BENCH_SIZE,
    FINALISATION_STAGES,
    PASS_TOKEN_WORK_IN_FEATURES,
    JobSize,
    ShardCosts,
    StageRates,
)
from mistudio_common.stages import DASHBOARD_STAGES, FILE_STAGES
from mistudio_compute.dashboards import Stage
from mistudio_compute.dashboards.shards import PassCount, ShardProgress
from mistudio_compute.jobs import RunHooks
from mistudio_compute.run_dashboards import CHUNK_FEATURES, StageReporter
from mistudio_export.generate import FileCount

EXAMPLE_TOKENS = 45 * 25
STAGES = [pb.STAGE_VALIDATING, *DASHBOARD_STAGES, *FILE_STAGES]
MESSAGE_EVERY = 0.25
"""Seconds between a pass's progress messages."""
ARCHIVE_BYTES = 150_000_000
"""The archive stage counts the bytes it packs (as publish reports them); a coarse count of
100 items over a long stage made its own rate jump by whole items between messages."""


@dataclass(frozen=True)
class ShardedExport:
    """An export whose computation ran in feature shards: each shard's pass and finalisation
    seconds, then the export's own stages' (reading and writing the files, validating them,
    packing the archive)."""

    features: int
    tokens: int
    passes: tuple[float, ...]
    finalising: float
    """One shard's finalisation."""
    files: tuple[float, float, float, float]
    start_up: float = 2.0
    """Seconds before the first shard's first batch (loading the model)."""

    @property
    def shards(self) -> int:
        return len(self.passes)


def on_the_bench_rates(features: int, tokens: int, shards: int) -> ShardedExport:
    """An export running at the bench's stage rates (``BENCH_SECONDS``), in ``shards`` shards
    that keep the hook activations (the first shard alone runs the model forward)."""
    size = JobSize(tokens, features, EXAMPLE_TOKENS)
    rates = StageRates.fit([])
    per_feature_token = rates.seconds(pb.STAGE_ACTIVATION_PASS, size) / (
        tokens * (features + PASS_TOKEN_WORK_IN_FEATURES)
    )
    each = -(-features // shards)
    passes = tuple(
        per_feature_token
        * tokens
        * (min(each, features - i * each) + PASS_TOKEN_WORK_IN_FEATURES * (i == 0))
        for i in range(shards)
    )
    finalising = sum(rates.seconds(s, size) for s in FINALISATION_STAGES) * each / features
    writing = rates.seconds(pb.STAGE_GENERATING_FILES, size)
    files = (
        0.26 * writing,  # the dashboards read, as in the 4,096-feature bench export
        0.74 * writing,
        rates.seconds(pb.STAGE_VALIDATING_OUTPUT, size),
        rates.seconds(pb.STAGE_CREATING_ARCHIVE, size),
    )
    return ShardedExport(features, tokens, passes, finalising, files)


BENCH_16384 = ShardedExport(
    features=16_384,
    tokens=262_144,
    passes=(16.4, 15.8),
    finalising=7.23,
    files=(7.18, 20.45, 9.5, 7.73),
)
"""The 16,384-feature bench export of bench/results/latest.md (05f77da, 2 shards, idle): its
pass stage of 39.4 s held the first shard's finalisation, as long as the last one's 7.2 s; the
passes split as the first alone runs the model forward (PASS_TOKEN_WORK_IN_FEATURES a token)."""
BENCH_131072 = ShardedExport(
    features=131_072,
    tokens=8_192,
    passes=(2.77, *[2.37] * 9),
    finalising=16.2,
    files=(70.0, 192.0, 84.5, 59.4),
    start_up=15.0,
)
"""The 131,072-feature bench export of bench/results/scale-131072 (32bc75b, 10 shards, idle):
its pass stage of 170 s held nine shards' finalisation of 16.2 s each, so 24 s of passes. It
ran before the lean llama2.c forward, so it is replayed on the priors of its time."""
SECONDS_AT_32BC75B = {
    pb.STAGE_VALIDATING: 0.06,
    pb.STAGE_ACTIVATION_PASS: 17.1,
    pb.STAGE_LOADING_EXAMPLES: 0.01,
    pb.STAGE_LOGIT_LENS: 4.9,
    pb.STAGE_HISTOGRAMS: 0.25,
    pb.STAGE_TOKEN_AGGREGATION: 0.03,
    pb.STAGE_CACHING: 0.11,
    pb.STAGE_GENERATING_FILES: 8.5,
    pb.STAGE_VALIDATING_OUTPUT: 2.6,
    pb.STAGE_CREATING_ARCHIVE: 1.9,
}
"""The bench's 4,096-feature stage seconds the priors came from when BENCH_131072 ran."""


SECONDS_AT_232EFC0 = {
    pb.STAGE_VALIDATING: 0.06,
    pb.STAGE_ACTIVATION_PASS: 4.65,
    pb.STAGE_LOADING_EXAMPLES: 0.01,
    pb.STAGE_LOGIT_LENS: 2.38,
    pb.STAGE_HISTOGRAMS: 0.01,
    pb.STAGE_TOKEN_AGGREGATION: 0.03,
    pb.STAGE_CACHING: 0.06,
    pb.STAGE_GENERATING_FILES: 5.33,
    pb.STAGE_VALIDATING_OUTPUT: 1.4,
    pb.STAGE_CREATING_ARCHIVE: 0.96,
}
"""The bench's 4,096-feature stage seconds at 232efc0 (a Zen 4 host), the priors until they
were refitted on a Zen 5 host: BENCH_16384 ran on such a Zen 4 host, in their proportions."""


def priors_of(seconds: dict[StageId, float]) -> StageRates:
    """The priors fitted on the bench export's stage ``seconds``."""
    return StageRates(
        {s: t / stage_rates.cost_units(s, BENCH_SIZE) for s, t in seconds.items()}, frozenset()
    )


PRIORS_AT_232EFC0 = priors_of(SECONDS_AT_232EFC0)


def priors_at_32bc75b(monkeypatch: pytest.MonkeyPatch) -> StageRates:
    """The priors as they were at 32bc75b: its stage seconds, and the model forward then
    worth 2,200 features a token."""
    monkeypatch.setattr(stage_rates, "PASS_TOKEN_WORK_IN_FEATURES", 2_200)
    return priors_of(SECONDS_AT_32BC75B)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Replay:
    """The export's tracker fed on a fake clock, and every ETA it showed."""

    tracker: ProgressTracker
    clock: FakeClock
    shown: list[tuple[float, float, StageId]]

    def report(self, stage: StageId, done: int, total: int, unit: str = "", msg: str = "") -> None:
        eta = self.tracker.update(stage, done, total, unit, msg).eta_seconds
        self.shown.append((self.clock.now, eta, stage))

    def counted(
        self,
        stage: StageId,
        start_up: float,
        seconds: float,
        total: int,
        since: int = 0,
        until: int | None = None,
    ) -> None:
        """A stage counting items ``since`` to ``until`` (all ``total``) evenly over ``seconds``
        after ``start_up``."""
        until = total if until is None else until
        self.report(stage, since, total)
        self.clock.now += start_up
        steps = max(1, round(seconds / MESSAGE_EVERY))
        for step in range(1, steps + 1):
            self.clock.now += seconds / steps
            self.report(stage, since + (until - since) * step // steps, total)

    def ratios(self) -> list[float]:
        """ETA shown ÷ time actually left at 10, 25, 50, 75 and 90% of the wall time."""
        wall = self.clock.now
        out = []
        for share in (0.1, 0.25, 0.5, 0.75, 0.9):
            at, eta, _ = [s for s in self.shown if s[0] <= share * wall][-1]
            out.append(eta / (wall - at))
        return out


def computation(run: ShardedExport, replay: Replay, costs: ShardCosts) -> None:
    """The computation's progress as its shards report it (they keep the hook activations):
    each pass batch by batch, each shard's finalisation chunk by chunk."""
    hooks = RunHooks(replay.report, JobControl(), Path("."), lambda _: None)
    reporter = StageReporter(hooks, DashboardParams().omitted)
    each = -(-run.features // run.shards)
    ranges = [(lo, min(lo + each, run.features)) for lo in range(0, run.features, each)]
    count = PassCount.of(ranges, costs, forward_each=False)
    for index, seconds in enumerate(run.passes):
        lo = index * each
        shard = min(each, run.features - lo)
        report: Callable[[Stage, int, int, str], None] = ShardProgress(
            reporter, index, run.shards, lo, run.features, count
        )
        report(Stage.ACTIVATION_PASS, 0, run.tokens, "")
        replay.clock.now += run.start_up if index == 0 else 0.0
        steps = max(1, round(seconds / MESSAGE_EVERY))
        for step in range(1, steps + 1):
            replay.clock.now += seconds / steps
            report(Stage.ACTIVATION_PASS, run.tokens * step // steps, run.tokens, "")
        report(Stage.LOADING_EXAMPLES, 1, 1, "")
        for hi in range(CHUNK_FEATURES, shard + CHUNK_FEATURES, CHUNK_FEATURES):
            done = min(hi, shard)
            report(Stage.HISTOGRAMS, done, shard, "")
            replay.clock.now += run.finalising * (done - (hi - CHUNK_FEATURES)) / shard
            report(Stage.LOGIT_LENS, done, shard, "")
            report(Stage.TOKEN_AGGREGATION, done, shard, "")


def replayed(run: ShardedExport, rates: StageRates, shards_known: bool = True) -> Replay:
    """The export's progress replayed, its tracker weighed by ``rates`` as the export weighs it (the
    computation's stages as the compute service predicts them for its shards)."""
    size = JobSize(run.tokens, run.features, EXAMPLE_TOKENS, run.shards if shards_known else 1)
    clock = FakeClock()
    replay = Replay(
        ProgressTracker("job", STAGES, rates.predict(STAGES, size), clock=clock), clock, []
    )
    replay.counted(pb.STAGE_VALIDATING, 0.0, 0.1, 1)
    computation(run, replay, rates.shard_costs(STAGES, size) if shards_known else ShardCosts())
    replay.counted(pb.STAGE_CACHING, 0.0, 0.1, run.features)
    reading, writing, validating, packing = run.files
    count = FileCount(read=run.features, written=run.features, passes=1)  # one count, two parts
    replay.counted(
        pb.STAGE_GENERATING_FILES, 0.0, reading, count.total, until=count.steps(count.read)
    )
    replay.counted(
        pb.STAGE_GENERATING_FILES, 0.3, writing, count.total, since=count.steps(count.read)
    )
    replay.counted(pb.STAGE_VALIDATING_OUTPUT, 0.2, validating, run.features)
    replay.counted(pb.STAGE_CREATING_ARCHIVE, 0.1, packing, ARCHIVE_BYTES)
    return replay


def replay_export(run: ShardedExport, rates: StageRates, shards_known: bool = True) -> list[float]:
    """The export's ETA ratios at 10, 25, 50, 75 and 90% of its wall time."""
    return replayed(run, rates, shards_known).ratios()


PRIORS = StageRates.fit([])


@pytest.mark.parametrize(
    "run",
    [
        on_the_bench_rates(features=16_384, tokens=262_144, shards=2),
        on_the_bench_rates(features=24_576, tokens=262_144, shards=3),
        on_the_bench_rates(features=65_536, tokens=65_536, shards=3),
        on_the_bench_rates(features=131_072, tokens=8_192, shards=10),
        on_the_bench_rates(features=131_072, tokens=65_536, shards=10),
    ],
    ids=lambda run: f"{run.features}x{run.tokens}-{run.shards}-shards",
)
def test_the_eta_of_a_sharded_export_at_its_rates_stays_within_30_percent(run) -> None:
    ratios = replay_export(run, PRIORS)
    assert all(0.7 <= r <= 1.3 for r in ratios), [f"x{r:.2f}" for r in ratios]


def test_the_eta_of_the_sharded_bench_export_stays_within_30_percent() -> None:
    """On the priors of its machine, as that run was estimated (the priors are the bench's
    4,096-feature stage rates)."""
    ratios = replay_export(BENCH_16384, PRIORS_AT_232EFC0)
    assert all(0.7 <= r <= 1.3 for r in ratios), [f"x{r:.2f}" for r in ratios]


def test_the_eta_of_the_131072_feature_bench_export_stays_within_30_percent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ratios = replay_export(BENCH_131072, priors_at_32bc75b(monkeypatch))
    assert all(0.7 <= r <= 1.3 for r in ratios), [f"x{r:.2f}" for r in ratios]


def test_weighed_as_one_shard_the_same_stream_misleads(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the fix is for: a pass stage predicted without the shards' finalisation."""
    ratios = replay_export(BENCH_131072, priors_at_32bc75b(monkeypatch), shards_known=False)
    assert max(ratios) > 10


def test_while_the_dashboards_are_read_the_eta_counts_the_writing_to_come() -> None:
    """The file stage reads the dashboards, then writes them, on one count (``FileCount``):
    counted apart, the reading's own rate predicted the reading alone, and the writing (three
    quarters of the stage) was missing from the ETA until it began."""
    replay = replayed(BENCH_16384, PRIORS_AT_232EFC0)
    wall = replay.clock.now
    reading_ends = BENCH_16384.files[0]
    files = [(at, eta) for at, eta, stage in replay.shown if stage == pb.STAGE_GENERATING_FILES]
    reading = [(at, eta) for at, eta in files if at <= files[0][0] + reading_ends]
    ratios = [eta / (wall - at) for at, eta in reading]
    assert all(0.7 <= r <= 1.3 for r in ratios), [f"x{r:.2f}" for r in ratios]
