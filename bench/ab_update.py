"""A/B of the pass's per-batch update: this tree's ``PassState.update`` against the one at a git
revision, on the same batches of the bench SAE, in one process: CPU seconds of each (a busy
machine skews both alike) and a bitwise comparison of every state tensor at the end.

    python bench/ab_update.py --against main --d-sae 4096 --rows 2048
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from mistudio_common.dashboard import DashboardParams
from mistudio_compute.adapters import dashboard_inputs
from mistudio_compute.dashboards.activation_pass import read_rows
from mistudio_compute.dashboards.inputs import ArrayTokenSource
from mistudio_compute.dashboards.params import state_config
from mistudio_compute.dashboards.state import PassState
from mistudio_compute.model_access import load_model
from mistudio_compute.sae.loading import load_sae

from bench.inputs import REPO, bench_model, prepare

STATE_MODULES = ("state", "keys", "exact_sum", "grid", "token_totals")
"""The modules of the state and its update, taken from the revision."""


def state_at(revision: str, folder: Path) -> ModuleType:
    """The state module of ``revision``, its own modules imported from a copy under ``folder``."""
    package = folder / "ab_base"
    package.mkdir()
    (package / "__init__.py").write_text("")
    pattern = re.compile(rf"mistudio_compute\.dashboards(\.| import )({'|'.join(STATE_MODULES)})")
    for name in STATE_MODULES:
        path = f"services/compute/mistudio_compute/dashboards/{name}.py"
        text = subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=REPO, check=True, capture_output=True,
            text=True,
        ).stdout  # fmt: skip
        (package / f"{name}.py").write_text(pattern.sub(r"ab_base\1\2", text))
    sys.path.insert(0, str(folder))
    return importlib.import_module("ab_base.state")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--against", default="main", help="git revision of the baseline")
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=2048, help="token rows (x 128)")
    parser.add_argument("--batch-rows", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--inputs", type=Path, default=Path("/tmp/bench-inputs"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = bench_model("stories260k", args.inputs)
    bench = prepare(args.inputs, model, args.rows, 128, args.d_sae)
    tokens = np.load(bench.token_file)
    inputs = dashboard_inputs(
        load_model(model.model_ref, device="cpu"), load_sae(bench.sae_folder), model.hook,
        ArrayTokenSource(tokens),
    )  # fmt: skip
    params = DashboardParams(n_top_examples=20, logit_k=10, histogram_bins=50)
    config = state_config(params, inputs.token_text.special_ids)
    device, features = torch.device("cpu"), torch.arange(args.d_sae)
    with tempfile.TemporaryDirectory(prefix="mistudio-ab-") as tmp:
        base = state_at(args.against, Path(tmp))
        states = {
            args.against: base.PassState.empty(config, features, 128, device, tokens.size),
            "this tree": PassState.empty(config, features, 128, device, tokens.size),
        }
        seconds = dict.fromkeys(["forward and encode", *states], 0.0)
        for i in range(0, args.rows, args.batch_rows):
            started = time.process_time()
            batch = read_rows(tokens, slice(i, i + args.batch_rows), device)  # [B, T]
            with torch.no_grad():
                x = inputs.reader.activations(batch)  # [B, T, d_in]
            acts = inputs.encoder.encode(x.reshape(-1, x.shape[-1]))  # [B*T, d_sae]
            seconds["forward and encode"] += time.process_time() - started
            for name, state in states.items():
                started = time.process_time()
                state.update(acts, batch, i)
                seconds[name] += time.process_time() - started
    for name, value in seconds.items():
        print(f"{name}: {value:.2f} CPU-s")
    a, b = (s.tensors() for s in states.values())
    differ = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    same = a.keys() == b.keys() and not differ
    print("every state tensor bitwise-equal" if same else f"DIFFER: {differ or 'field names'}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
