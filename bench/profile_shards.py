"""Profile one whole sharded computation (pass and finalisation of every feature shard, as the
compute service runs it: the default memory budget, kept hook activations, a checkpoint file)
on the bench inputs: CPU seconds per Python function (cProfile on the process clock, so a busy
machine skews it little), the split by stage, and a digest of the dashboards.

    python bench/profile_shards.py --rows 2048 --d-sae 16384 [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from mistudio_common.dashboard import DashboardParams
from mistudio_compute.config import DEFAULT_MEMORY_BUDGET
from mistudio_compute.dashboards.activation_pass import Checkpointing
from mistudio_compute.dashboards.pipeline import compute_dashboards
from mistudio_compute.run_dashboards import CHUNK_FEATURES

from bench.inputs import MODELS
from bench.profile_pass import pass_inputs

PARTS = {
    "model forward": "activations",
    "encode": "encode_tiles",
    "PassState.update": "update",
    "checkpoint saves": "save_checkpoint",
    "finalisation": "finalize_dashboards",
    "freed memory": "_return_freed_memory",
}
"""Stages of the split, by the function whose cumulative CPU time each is."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2048, help="token rows (x --context)")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    _, inputs, _ = pass_inputs(args.model, args.rows, args.context, args.d_sae)
    params = DashboardParams(
        n_top_examples=20, n_quantile_groups=5, examples_per_quantile_group=5, logit_k=10,
        histogram_bins=50,
    )  # fmt: skip
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="mistudio-shards-") as tmp:
        chunks = compute_dashboards(
            inputs, params, chunk_size=CHUNK_FEATURES, memory_budget=DEFAULT_MEMORY_BUDGET,
            checkpoint=Checkpointing(Path(tmp) / "pass.safetensors"),
        )  # fmt: skip

        def run() -> None:
            for chunk in chunks:
                for d in chunk:
                    digest.update(d.SerializeToString(deterministic=True))

        wall, cpu = time.perf_counter(), time.process_time()
        profile = cProfile.Profile(time.process_time)
        profile.runcall(run)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(args.top)
    cumulative = {fn[2]: row[3] for fn, row in stats.stats.items()}  # type: ignore[attr-defined]
    split = ", ".join(f"{part} {cumulative.get(name, 0.0):.1f}" for part, name in PARTS.items())
    print(f"CPU s by stage: {split}")
    print(f"computation of {args.d_sae} features: {wall:.1f} s wall, {cpu:.1f} s CPU; sha256 "
          f"of the dashboards {digest.hexdigest()}")  # fmt: skip


if __name__ == "__main__":
    main()
