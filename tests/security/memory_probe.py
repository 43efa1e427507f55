"""Measures the peak memory of one real dashboard computation, in a process of its own.

``python -m tests.security.memory_probe N_FEATURES`` prints one JSON line: the peak RSS growth
while computing N_FEATURES dashboards at the largest parameters on the tiny real model, and the
prediction the compute service plans its feature shards with.
"""

from __future__ import annotations

import json
import sys

import torch
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_options import PARAM_BOUNDS
from mistudio_compute.dashboards import compute_dashboards, state_config
from mistudio_compute.dashboards.memory import plan_within_budget

from tests.compute.dashboards import tiny

LARGEST = DashboardParams(
    **{name: high for name, (_, high) in PARAM_BOUNDS.items()}, aggregate_all_tokens=True
)
BATCH_ROWS = 32
CHUNK_FEATURES = 256


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def main(n_features: int) -> None:
    torch.set_num_threads(1)
    model, tokens = tiny.tiny_model(), tiny.tiny_tokens()
    inputs = tiny.make_inputs(model, tiny.make_sae(model, tokens, "relu", d_sae=256), tokens)
    list(compute_dashboards(inputs, DashboardParams(), features=range(2)))  # warm up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS
    before = _status("VmRSS")
    for _chunk in compute_dashboards(
        inputs, LARGEST, features=range(n_features), batch_size=BATCH_ROWS
    ):  # each chunk is handed on and dropped, as the service does
        pass
    measured = _status("VmHWM") - before
    n_rows, seq_len = tokens.shape
    predicted = plan_within_budget(
        LARGEST, state_config(LARGEST, tiny.SPECIAL), n_features, batch_rows=BATCH_ROWS,
        seq_len=seq_len, n_rows=n_rows, chunk_size=CHUNK_FEATURES, budget=None,
    ).peak_bytes  # fmt: skip
    print(json.dumps({"measured": measured, "predicted": predicted}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
