"""Stage rates: each stage's time fitted against its own cost driver, persisted, and used as a
job's progress weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common import stage_rates
from mistudio_common.progress import ProgressTracker
from mistudio_common.stage_rates import (
    PACE_BOUNDS,
    PASS_TOKEN_WORK_IN_FEATURES,
    PRIOR_SECONDS_PER_UNIT,
    RECENT_PER_STAGE,
    JobSize,
    RateFile,
    StageRates,
    StageTime,
    cost_units,
    machine_pace,
    stage_times,
)

PASS, HISTOGRAMS, WRITING = (
    ppb.STAGE_ACTIVATION_PASS,
    ppb.STAGE_HISTOGRAMS,
    ppb.STAGE_GENERATING_FILES,
)
SECONDS_PER_TOKEN_FEATURE = 3e-8
SECONDS_PER_EXAMPLE_TOKEN = 3e-6
PER_TOKEN = PASS_TOKEN_WORK_IN_FEATURES


def synthetic_job(tokens: int, d_sae: int, examples: int = 1125) -> list[StageTime]:
    """Stage times of a machine whose pass costs tokens × (features + its per-token work) and
    whose later stages cost features × example tokens, exactly."""
    size = JobSize(tokens=tokens, features=d_sae, example_tokens=examples)
    return [
        StageTime(PASS, size, SECONDS_PER_TOKEN_FEATURE * tokens * (d_sae + PER_TOKEN)),
        StageTime(HISTOGRAMS, size, SECONDS_PER_EXAMPLE_TOKEN * d_sae * examples),
        StageTime(WRITING, size, 2 * SECONDS_PER_EXAMPLE_TOKEN * d_sae * examples),
    ]


def test_finalisation_does_not_grow_with_tokens_and_the_pass_does() -> None:
    small = JobSize(tokens=1_000, features=100, example_tokens=50)
    many_tokens = JobSize(tokens=100_000, features=100, example_tokens=50)
    assert cost_units(HISTOGRAMS, many_tokens) == cost_units(HISTOGRAMS, small)
    assert cost_units(PASS, many_tokens) == 100 * cost_units(PASS, small)


def test_the_pass_grows_less_than_its_features_as_measured_on_the_bench() -> None:
    """Its per-token work does not grow with the features: 4.65 to 16.8 seconds from 4,096 to
    16,384 features (232efc0, idle, one shard at both sizes)."""
    small = JobSize(tokens=262_144, features=4_096, example_tokens=1125)
    large = JobSize(tokens=262_144, features=16_384, example_tokens=1125)
    growth = cost_units(PASS, large) / cost_units(PASS, small)
    assert growth == pytest.approx(16.79 / 4.65, rel=0.02)
    assert cost_units(HISTOGRAMS, large) == 4 * cost_units(HISTOGRAMS, small)


def test_a_fit_of_one_job_predicts_another_size_exactly() -> None:
    rates = StageRates.fit(synthetic_job(tokens=4_096, d_sae=512))
    other = JobSize(tokens=262_144, features=16_384, example_tokens=600)
    expected = synthetic_job(262_144, 16_384, examples=600)
    for time in expected:
        assert rates.seconds(time.stage, other) == pytest.approx(time.seconds, rel=1e-9)
    assert rates.all_measured([PASS, HISTOGRAMS, WRITING])


def test_a_stage_never_measured_keeps_its_prior() -> None:
    rates = StageRates.fit(synthetic_job(tokens=4_096, d_sae=512))
    size = JobSize(tokens=4_096, features=512, example_tokens=1125)
    archive = ppb.STAGE_CREATING_ARCHIVE
    assert rates.seconds(archive, size) == PRIOR_SECONDS_PER_UNIT[archive] * 512 * 1125
    assert not rates.all_measured([PASS, archive])


def test_the_fit_weighs_jobs_by_their_size() -> None:
    """Total seconds over total units: a tiny job whose fixed overhead makes its own rate
    10,000 times too slow moves the fit by 2%, where a mean of per-job rates would be ruined."""
    big = synthetic_job(tokens=100_000, d_sae=4_096)
    tiny_and_slow = [StageTime(t.stage, JobSize(100, 8, 1125), 0.1) for t in synthetic_job(100, 8)]
    rate = StageRates.fit([*big, *tiny_and_slow]).seconds_per_unit[PASS]
    assert rate == pytest.approx(SECONDS_PER_TOKEN_FEATURE, rel=0.05)


def test_the_rate_file_keeps_recent_measurements_and_survives_a_reload(tmp_path: Path) -> None:
    book = RateFile(tmp_path / "stage_rates.json")
    assert book.times() == []
    for d_sae in range(1, RECENT_PER_STAGE + 6):
        book.record(synthetic_job(tokens=1_000, d_sae=d_sae))
    times = RateFile(tmp_path / "stage_rates.json").times()
    passes = [t.size.features for t in times if t.stage == PASS]
    assert passes == list(range(6, RECENT_PER_STAGE + 6))  # the oldest five dropped
    assert book.rates().seconds_per_unit[PASS] == pytest.approx(SECONDS_PER_TOKEN_FEATURE)


def test_an_unreadable_rate_file_falls_back_to_the_priors(tmp_path: Path) -> None:
    path = tmp_path / "stage_rates.json"
    path.write_text('[{"stage": 2, "size": {"tokens": 1}}]')
    priors = {stage: rate * machine_pace() for stage, rate in PRIOR_SECONDS_PER_UNIT.items()}
    assert RateFile(path).rates().seconds_per_unit == priors


def test_priors_follow_the_machines_pace_and_measured_rates_do_not() -> None:
    measured = synthetic_job(tokens=4_096, d_sae=512)
    at_bench_pace, twice_as_slow = StageRates.fit(measured), StageRates.fit(measured, pace=2.0)
    assert twice_as_slow.seconds_per_unit[PASS] == at_bench_pace.seconds_per_unit[PASS]
    archive = ppb.STAGE_CREATING_ARCHIVE  # never measured
    assert twice_as_slow.seconds_per_unit[archive] == 2 * PRIOR_SECONDS_PER_UNIT[archive]


def test_the_machine_pace_is_the_probe_against_the_bench_machines_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probed = stage_rates.probe_seconds()
    assert 0 < probed < 1  # a dozen milliseconds of CPU on the bench machine
    for probe, pace in ((0.005, 2.0), (1e-9, PACE_BOUNDS[0]), (10.0, PACE_BOUNDS[1])):
        monkeypatch.setattr(stage_rates, "probe_seconds", lambda probe=probe: probe)
        machine_pace.cache_clear()
        assert machine_pace() == pytest.approx(pace)
    machine_pace.cache_clear()


def test_a_finished_jobs_progress_gives_its_measured_stages() -> None:
    now = [0.0]
    tracker = ProgressTracker("job", [PASS, HISTOGRAMS, WRITING], clock=lambda: now[0])
    tracker.update(PASS, 0, 10)
    now[0] = 5.0
    tracker.update(HISTOGRAMS, 0, 10)
    now[0] = 7.0
    finished = tracker.set_state(ppb.JOB_STATE_SUCCEEDED)  # WRITING never ran
    size = JobSize(1, 1, 1)
    assert stage_times(finished, size) == [
        StageTime(PASS, size, 5.0),
        StageTime(HISTOGRAMS, size, 2.0),
    ]


def test_predicted_seconds_as_weights_give_an_eta_in_the_measured_proportion() -> None:
    now = [0.0]
    tracker = ProgressTracker("job", [PASS, WRITING], clock=lambda: now[0])
    tracker.weigh([30.0, 10.0])  # the pass is predicted to take three times the writing
    tracker.update(PASS, 0, 4)
    now[0] = 15.0
    halfway = tracker.update(PASS, 2, 4)
    assert halfway.eta_seconds == pytest.approx(15.0 + 10.0)


def test_in_feature_shards_the_pass_stage_holds_all_but_the_last_shards_finalisation() -> None:
    """Each shard but the last finalises inside the pass stage: 9/10 of the finalisation's
    seconds move to the pass, and the job's whole prediction stays what it was."""
    rates = StageRates.fit(synthetic_job(tokens=4_096, d_sae=512))
    stages = [PASS, HISTOGRAMS, WRITING]
    whole = JobSize(tokens=8_192, features=131_000, example_tokens=1125)
    pure = rates.predict(stages, whole)
    sharded = rates.predict(stages, replace(whole, shards=10))
    assert sharded[0] == pytest.approx(pure[0] + 0.9 * pure[1])
    assert sharded[1] == pytest.approx(0.1 * pure[1])
    assert sharded[2] == pure[2] and sum(sharded) == pytest.approx(sum(pure))


def sharded_progress(tokens: int, d_sae: int, shards: int) -> ppb.Progress:
    """The progress of a sharded job on the synthetic machine: the pass stage timed its pass
    and every shard's finalisation but the last's, which the histograms stage timed."""
    size = JobSize(tokens=tokens, features=d_sae, example_tokens=1125, shards=shards)
    true = {t.stage: t.seconds for t in synthetic_job(tokens, d_sae)}
    in_pass = true[HISTOGRAMS] * size.finalised_in_pass
    elapsed = {PASS: true[PASS] + in_pass, HISTOGRAMS: true[HISTOGRAMS] - in_pass}
    return ppb.Progress(
        stages=[
            ppb.StageProgress(stage=s, state=ppb.JOB_STATE_SUCCEEDED, elapsed_seconds=elapsed[s])
            for s in (PASS, HISTOGRAMS)
        ]
    )


def test_a_sharded_jobs_stages_are_fitted_as_the_work_they_timed() -> None:
    """A fit of a 10-shard job predicts an unsharded job exactly: its pass stage is not taken
    for pure pass (the rate would be 13 times too slow here), nor its last shard's
    finalisation for all the features' (10 times too fast)."""
    size = JobSize(tokens=8_192, features=131_000, example_tokens=1125, shards=10)
    rates = StageRates.fit(stage_times(sharded_progress(8_192, 131_000, 10), size))
    other = synthetic_job(262_144, 4_096)
    for time in other:
        if time.stage != WRITING:
            assert rates.seconds(time.stage, time.size) == pytest.approx(time.seconds, rel=1e-9)
