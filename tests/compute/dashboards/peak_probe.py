"""Measures one real dashboard computation's peak memory, in a process of its own.

``python -m tests.compute.dashboards.peak_probe D_SAE [BUDGET]`` prints one JSON line: the
growth of the peak resident set during the computation (the high-water mark is reset first),
what the shard plan predicts for it, the features per shard and the hook activations kept
between shards.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from mistudio_common.dashboard import DashboardParams
from mistudio_compute.adapters import SaeFeatures
from mistudio_compute.dashboards import compute_dashboards, state_config
from mistudio_compute.dashboards.memory import plan_within_budget
from mistudio_compute.sae import build_sae

from tests.compute.builders import sae_config
from tests.compute.dashboards import tiny

PARAMS = DashboardParams(n_top_examples=50, context_left=32, context_right=32)
BATCH = 16
CHUNK = 256
ROWS = 128


def resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    d_sae = int(sys.argv[1])
    budget = int(sys.argv[2]) if len(sys.argv) > 2 else None
    torch.set_num_threads(1)
    model, tokens = tiny.tiny_model(), tiny.tiny_tokens(ROWS)
    relu = tiny.make_sae(model, tokens, "relu", d_sae=d_sae)
    weights = {"W_enc": relu.w_enc, "b_enc": relu.b_enc, "W_dec": relu.w_dec,
               "b_dec": torch.zeros(tiny.D_MODEL)}  # fmt: skip
    sae = build_sae(sae_config("standard", tiny.D_MODEL, d_sae, hook_name=tiny.HOOK), weights)
    # the service's encoder: a CPU pass takes each encode tile's entries, no dense activations
    inputs = replace(tiny.make_inputs(model, relu, tokens), encoder=SaeFeatures(sae))
    config = state_config(PARAMS, tiny.SPECIAL)
    plan = plan_within_budget(PARAMS, config, d_sae, batch_rows=BATCH, seq_len=tiny.N_CTX,
                              n_rows=ROWS, chunk_size=CHUNK, budget=budget,
                              hook_width=tiny.D_MODEL)  # fmt: skip
    assert plan.batch_rows == BATCH
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set (VmHWM)
    before = resident_kib("VmRSS")
    for _chunk in compute_dashboards(
        inputs, PARAMS, batch_size=BATCH, chunk_size=CHUNK, memory_budget=budget
    ):  # each chunk is handed on and dropped, as the service does
        pass
    measured = (resident_kib("VmHWM") - before) * 1024
    print(json.dumps({"measured": measured, "predicted": plan.peak_bytes,
                      "shard": plan.shard_size, "kept": plan.kept_bytes}))  # fmt: skip


if __name__ == "__main__":
    main()
