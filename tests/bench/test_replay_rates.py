"""The replay of a bench run's estimates sizes each run by the feature shards it recorded."""

from __future__ import annotations

from typing import Any

from mistudio_common.stage_rates import PRIOR_SECONDS_PER_UNIT, JobSize, StageRates

from bench.replay_rates import EXAMPLE_TOKENS, STAGES, name, replay

TOKENS = 262_144


def bench_size(features: int, shards: int, forwards: int) -> dict[str, Any]:
    """A bench size whose one run took what the priors predict of its shards."""
    size = JobSize(TOKENS, features, EXAMPLE_TOKENS, shards, forwards)
    seconds = StageRates(PRIOR_SECONDS_PER_UNIT, frozenset()).predict(STAGES, size)
    run = {
        "stages_s": {name(s): t for s, t in zip(STAGES, seconds, strict=True)},
        "estimated_s": sum(seconds),
        "shards": shards,
        "forwards": forwards,
    }
    return {"n_tokens": TOKENS, "d_sae": features, "runs": {"ours": [run]}}


def test_a_run_in_feature_shards_fits_the_rates_that_predict_an_unsharded_run() -> None:
    """Ten shards finalise nine tenths of their features inside the pass stage: fitted as the
    compute fits them, they predict a 4,096-feature run in one shard exactly."""
    bench = {"sizes": [bench_size(40_960, 10, 1), bench_size(4_096, 1, 1)]}
    lines = replay(bench)
    second = next(line for line in lines if line.startswith("run 2"))
    assert "in 1 shard(s)" in second
    assert "(x1.00)" in second


def test_a_run_recorded_without_shards_is_replayed_as_one_shard() -> None:
    old = bench_size(4_096, 1, 1)
    for key in ("shards", "forwards"):
        del old["runs"]["ours"][0][key]
    lines = replay({"sizes": [old, bench_size(4_096, 1, 1)]})
    assert "(x1.00)" in next(line for line in lines if line.startswith("run 2"))
