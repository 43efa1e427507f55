"""Machine-limit and agreement arithmetic for the bench report."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

STORIES = {"d_model": 64, "d_mlp": 172, "n_kv": 4, "n_heads": 8}


def matmul_gflops(n: int = 1024, threads: int = 0, seconds: float = 1.0) -> float:
    """fp32 torch.matmul rate of an n x n product on the current thread count."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.matmul(a, b)
        runs += 1
    return 2 * n**3 * runs / (time.perf_counter() - started) / 1e9


def flops_per_token(hook_layer: int, d_sae: int, context: int) -> float:
    """Forward FLOPs up to and including block ``hook_layer`` of stories260K, plus SAE encode."""
    d, f, kv = STORIES["d_model"], STORIES["d_mlp"], STORIES["n_kv"] * 8
    per_block = 2 * (d * d + 2 * d * kv + d * d) + 2 * 3 * d * f + 2 * 2 * context * d
    return (hook_layer + 1) * per_block + 2 * d * d_sae


def agreement(ours: dict[str, Any], theirs: dict[str, Any], logit_k: int) -> dict[str, Any]:
    """Per quantity: share of features agreeing and the largest difference."""
    common = sorted(set(ours) & set(theirs), key=int)
    top_diff, pos_same, freq_diff = [], [], []
    for i in common:
        a, b = ours[i], theirs[i]
        n = min(len(a["max_values"]), len(b["max_values"]))
        if n:
            top_diff.append(
                float(np.max(np.abs(np.subtract(a["max_values"][:n], b["max_values"][:n]))))
            )
        pos_same.append(set(a["pos_ids"][:logit_k]) == set(b["pos_ids"][:logit_k]))
        freq_diff.append(abs(a["frequency"] - b["frequency"]))

    def share(flags: list[bool]) -> float:
        return float(np.mean(flags)) if flags else float("nan")

    return {
        "n_features_compared": len(common),
        "top_example_max_values": {
            "fraction_agreeing_1e-2": share([d <= 1e-2 for d in top_diff]),
            "max_abs_diff": max(top_diff, default=float("nan")),
            "note": "theirs rounded to 3 decimals; ours full fp32",
        },
        "logit_lens_top_tokens": {
            "fraction_same_set": share(pos_same),
            "note": "decoder rows are unit-norm, so folding W_dec norms changes nothing here",
        },
        "activation_frequency": {
            "fraction_agreeing_1e-3": share([d <= 1e-3 for d in freq_diff]),
            "max_abs_diff": max(freq_diff, default=float("nan")),
            "note": "theirs excludes BOS/EOS/PAD tokens and is quantised to 1e-5",
        },
    }
