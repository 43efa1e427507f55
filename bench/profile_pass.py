"""Profile the activation pass alone on the bench inputs: CPU seconds per torch op (or Python
function), the pass's wall and CPU seconds and its share of the matmul rate measured in the same
process, by wall time and by CPU time (the one to trust on a busy machine).

    python bench/profile_pass.py --rows 512 --d-sae 4096 [--profile torch|python|none] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from mistudio_common.dashboard import DashboardParams
from mistudio_compute.adapters import dashboard_inputs
from mistudio_compute.dashboards.activation_pass import run_activation_pass
from mistudio_compute.dashboards.inputs import ArrayTokenSource, DashboardInputs
from mistudio_compute.dashboards.params import state_config
from mistudio_compute.dashboards.state import StateConfig
from mistudio_compute.model_access import load_model
from mistudio_compute.sae.loading import load_sae

from bench.inputs import MODELS, BenchModel, bench_model, prepare
from bench.measure import flops_per_token, matmul_gflops


def pass_inputs(
    model_name: str, rows: int, context: int, d_sae: int
) -> tuple[BenchModel, DashboardInputs, StateConfig]:
    """The bench's model, tokens and SAE as the pass reads them, with the bench's parameters."""
    with tempfile.TemporaryDirectory(prefix="mistudio-profile-") as tmp:
        model = bench_model(model_name, Path(tmp))
        bench = prepare(Path(tmp), model, rows, context, d_sae)
        tokens = np.load(bench.token_file)
        loaded = load_model(model.model_ref, device="cpu")
        sae = load_sae(bench.sae_folder)
    inputs = dashboard_inputs(loaded, sae, model.hook, ArrayTokenSource(tokens))
    params = DashboardParams(n_top_examples=20, logit_k=10, histogram_bins=50)
    return model, inputs, state_config(params, inputs.token_text.special_ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=512, help="token rows (x --context)")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument("--batch-rows", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--profile", choices=("torch", "python", "none"), default="torch",
        help="CPU time per torch op, per Python function (cProfile), or timings only",
    )  # fmt: skip
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, inputs, config = pass_inputs(args.model, args.rows, args.context, args.d_sae)
    features = torch.arange(args.d_sae)

    def run() -> None:
        run_activation_pass(inputs, config, features, batch_size=args.batch_rows)

    run_activation_pass(inputs, config, features, rows=range(args.batch_rows))  # warm up
    gflops = matmul_gflops(threads=args.threads)
    cpu_gflops = matmul_gflops(threads=args.threads, clock=time.process_time)
    wall, cpu = time.perf_counter(), time.process_time()
    if args.profile == "python":
        profile = cProfile.Profile()
        profile.runcall(run)
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    elif args.profile == "torch":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    else:
        run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    flops = flops_per_token(model.dims(), model.hook_layer, args.d_sae, args.context)
    n_tokens = args.rows * args.context
    fraction = flops * n_tokens / wall / (gflops * 1e9)
    cpu_fraction = flops * n_tokens / cpu / (cpu_gflops * 1e9)
    print(f"pass: {wall:.2f} s wall, {cpu:.2f} s CPU for {n_tokens} tokens; matmul "
          f"{gflops:.1f} GFLOP/s, {cpu_gflops:.1f} GFLOP per CPU-s; fraction of the matmul "
          f"rate {fraction:.2%} by wall time, {cpu_fraction:.2%} by CPU time "
          f"(profile: {args.profile})")  # fmt: skip


if __name__ == "__main__":
    main()
