"""Profile finalisation alone (pass state -> FeatureDashboard chunks) on the bench inputs: CPU
seconds per Python function (cProfile) or in total, so a change to it can be judged on a busy
machine. The pass state is computed once and kept in ``--state`` (a pass checkpoint file).

    python bench/profile_finalize.py --rows 2048 --d-sae 4096 --state /tmp/fin-4096.safetensors
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import DashboardParams
from mistudio_compute.dashboards.activation_pass import run_activation_pass
from mistudio_compute.dashboards.checkpoint import Cursor, load_checkpoint, save_checkpoint
from mistudio_compute.dashboards.finalize import finalize_dashboards

from bench.inputs import MODELS
from bench.profile_pass import pass_inputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2048, help="token rows (x --context)")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--state", type=Path, required=True, help="pass checkpoint (made once)")
    parser.add_argument("--profile", choices=("python", "none"), default="python")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    _, inputs, config = pass_inputs(args.model, args.rows, args.context, args.d_sae)
    if not args.state.exists():
        features = torch.arange(args.d_sae)
        passed = run_activation_pass(inputs, config, features, batch_size=32)
        n_rows = len(inputs.source.tokens)
        save_checkpoint(args.state, passed.state, Cursor(n_rows, 0, n_rows, 32))
    params = DashboardParams(
        n_top_examples=20, n_quantile_groups=5, examples_per_quantile_group=5, logit_k=10,
        histogram_bins=50,
    )  # fmt: skip
    digest = hashlib.sha256()

    state, _ = load_checkpoint(args.state, torch.device("cpu"))

    def run() -> list[dpb.FeatureDashboard]:
        return [d for chunk in finalize_dashboards(state, inputs, params) for d in chunk]

    wall, cpu = time.perf_counter(), time.process_time()
    if args.profile == "python":
        profile = cProfile.Profile(time.process_time)  # CPU seconds: the machine is shared
        out = profile.runcall(run)
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    else:
        out = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for d in out:
        digest.update(d.SerializeToString(deterministic=True))
    print(f"finalisation of {len(out)} features: {wall:.2f} s wall, {cpu:.2f} s CPU "
          f"(profile: {args.profile}); sha256 of the messages {digest.hexdigest()}")  # fmt: skip


if __name__ == "__main__":
    main()
