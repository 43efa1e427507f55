"""Replays a bench run's time estimates with this tree's stage rates, from its measured stages.

``python bench/replay_rates.py bench/results/latest.json``: for each of its ours runs in order,
the estimate the priors (first run) or the rates fitted from the runs before it would give,
stage by stage, beside the stage times the run measured. A change to a cost driver or a prior
is checked against measured runs this way without running the bench again (its runs share one
data folder, so the services fitted the same way while it ran). Each run is sized by the
feature shards and model forwards it recorded (runs recorded before they were: one of each),
and fitted as the compute fits it (``stage_times``). Assumes the bench's default dashboard
parameters (45 examples of 25 tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.stage_rates import BENCH_SECONDS, JobSize, StageRates, stage_times

STAGES = list(BENCH_SECONDS)
EXAMPLE_TOKENS = 45 * 25


def name(stage: ppb.Stage.ValueType) -> str:
    return ppb.Stage.Name(stage).removeprefix("STAGE_").lower()


def job_size(tokens: int, features: int, run: dict[str, Any]) -> JobSize:
    """The run's size in the shards and forwards it recorded."""
    return JobSize(tokens, features, EXAMPLE_TOKENS, run.get("shards", 1), run.get("forwards", 1))


def measured_progress(run: dict[str, Any]) -> ppb.Progress:
    """The run's stage times as the finished job's progress reported them."""
    return ppb.Progress(
        stages=[
            ppb.StageProgress(
                stage=stage,
                state=ppb.JOB_STATE_SUCCEEDED,
                elapsed_seconds=run["stages_s"].get(name(stage), 0.0),
            )
            for stage in STAGES
        ]
    )


def replay(bench: dict[str, Any]) -> list[str]:
    runs = [
        (job_size(size["n_tokens"], size["d_sae"], run), run)
        for size in bench["sizes"]
        for run in size["runs"]["ours"]
    ]
    lines = []
    for i, (size, run) in enumerate(runs):
        earlier = [t for s, r in runs[:i] for t in stage_times(measured_progress(r), s)]
        predicted = StageRates.fit(earlier).predict(STAGES, size)
        measured = [run["stages_s"].get(name(stage), 0.0) for stage in STAGES]
        rates = "fitted from the runs before" if i else "priors"
        lines.append(
            f"run {i + 1}, d_sae {size.features} in {size.shards} shard(s) ({rates}): "
            f"{sum(predicted):.1f} s for "
            f"{sum(measured):.1f} s of stages (x{sum(predicted) / sum(measured):.2f}); "
            f"the service estimated {run['estimated_s']:.1f} s then"
        )
        lines += [
            f"  {name(stage)}: {p:.1f} / {m:.1f} s"
            for stage, p, m in zip(STAGES, predicted, measured, strict=True)
            if max(p, m) >= 0.5
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bench_json", type=Path)
    args = parser.parse_args(argv)
    print("\n".join(replay(json.loads(args.bench_json.read_text(encoding="utf-8")))))


if __name__ == "__main__":
    main()
