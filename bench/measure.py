"""Machine-limit and agreement arithmetic for the bench report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from bench.float_ambiguity import FloatAmbiguity


def matmul_gflops(
    threads: int = 0,
    seconds: float = 1.0,
    device: str = "cpu",
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """fp32 torch.matmul rate of a square product on ``device`` (n = 1024 on a CPU, 8192 on a
    GPU, sizes each saturates) at the current thread count, per second of ``clock`` (per
    CPU-second with ``time.process_time``, which a busy machine does not skew)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    on_gpu = device.startswith("cuda")
    n = 8192 if on_gpu else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    torch.matmul(a, b)
    sync()
    runs, started = 0, clock()
    while clock() - started < seconds:
        torch.matmul(a, b)
        runs += 1
        sync()
    return 2 * n**3 * runs / (clock() - started) / 1e9


def byte_rates(samples: Sequence[bytes], seconds: float = 0.3) -> dict[str, float]:
    """Bytes per second one core of this machine turns into output for the work every export
    must do at least once per byte: ``dumps`` (orjson serialising the parsed ``samples``, per
    byte produced), ``loads`` (orjson parsing them) and ``deflate`` (the export's deflater,
    ``mistudio_export.deflate``, raw deflate as in a ZIP). ``samples`` are real output files,
    so the mix of numbers and strings is the export's own."""
    from mistudio_export import deflate as export_deflate

    parsed = [orjson.loads(s) for s in samples]
    dumped = sum(len(orjson.dumps(d)) for d in parsed)
    size = sum(map(len, samples))

    stream = b"\n".join(samples)

    def deflate() -> None:
        """One stream, as a file is deflated (a compressor per JSONL row cost ~3x per byte)."""
        compressor = export_deflate.raw_deflater()
        compressor.compress(stream)
        compressor.flush()

    def rate(work: Callable[[], object], n_bytes: int) -> float:
        """Per CPU second, so that other load on the machine does not lower the floor's rate."""
        runs, started = 0, time.process_time()
        while runs == 0 or time.process_time() - started < seconds:
            work()
            runs += 1
        return n_bytes * runs / max(time.process_time() - started, 1e-9)

    return {
        "dumps": rate(lambda: [orjson.dumps(d) for d in parsed], dumped),
        "loads": rate(lambda: [orjson.loads(s) for s in samples], size),
        "deflate": rate(deflate, size),
    }


FLOOR_RATES = {
    "serialization": (("dumps", "json_bytes"), ("deflate", "gzip_bytes")),
    "validation": (("loads", "json_bytes"),),
    "archive": (("deflate", "zip_bytes"),),
    "whole_export": (("dumps", "json_bytes"), ("deflate", "output_bytes")),
}
"""What bounds each stage from below, as (``byte_rates`` key, bytes it applies to): writing
serialises every JSON byte once and gzips the files written gzipped, a full validation parses
each JSON byte once, the archive deflates the rest (it stores gzip files as they are); after
the pass an export at least serialises and deflates its output once. Sizes count gzip files
unpacked. Finalisation and the pass have no byte floor (their work is arithmetic, see the
matmul share)."""


def floors(sizes: dict[str, int], rates: dict[str, float]) -> dict[str, float]:
    """Per stage: the seconds its ``FLOOR_RATES`` need for the export's ``sizes``
    (``json_bytes``, ``gzip_bytes``, ``output_bytes``) on this machine."""
    sizes = sizes | {"zip_bytes": sizes["output_bytes"] - sizes["gzip_bytes"]}
    return {
        stage: sum(sizes[of] / rates[rate] for rate, of in needs)
        for stage, needs in FLOOR_RATES.items()
    }


def flops_per_token(dims: dict[str, int], hook_layer: int, d_sae: int, context: int) -> float:
    """Forward FLOPs of a llama-style model (``BenchModel.dims``) up to and including block
    ``hook_layer``, plus the SAE encode; attention scores and mixing counted over the full
    context."""
    d, f = dims["d_model"], dims["d_mlp"]
    kv = dims["n_kv"] * (d // dims["n_heads"])
    per_block = 2 * (d * d + 2 * d * kv + d * d) + 2 * 3 * d * f + 2 * 2 * context * d
    return (hook_layer + 1) * per_block + 2 * d * d_sae


ROUNDING = 5e-4 + 1e-5
"""SAEDashboard rounds logit values to 3 decimals; 1e-5 more for float32 noise."""
VALUE_ROUNDING = 5.5e-4 + 1e-5
"""Its example values are rounded twice, to 4 decimals (sequence data) then to 3 (converter)."""
DENSITY_QUANTUM = 5e-6 + 1e-9
"""Its frequency is parsed back from a ``{:.3%}`` title: a multiple of 1e-5."""


MAX_LISTED = 20
"""Disagreeing feature indices listed per quantity, for a closer look."""

Check = tuple[bool, float, int]
"""(agrees, largest absolute difference, values compared) for one feature."""


def agreement(
    ours: dict[str, Any],
    theirs: dict[str, Any],
    logit_k: int,
    n_tokens: int,
    ambiguity: FloatAmbiguity,
) -> dict[str, Any]:
    """Per quantity that both sides define the same way: share of features agreeing within the
    rounding SAEDashboard applies (the frequency also within ``ambiguity``'s tokens), the largest
    difference and how many values were compared (see each ``note`` for what exactly is
    compared)."""
    common = sorted(set(ours) & set(theirs), key=int)
    checks: dict[str, list[Check]] = {k: [] for k in _NOTES}
    for i in common:
        a, b = ours[i], theirs[i]
        top = (a["max_activation"], b["max_activation"])
        checks["max_activation"].append(_within(*top, VALUE_ROUNDING))
        checks["top_example_prompt_maxima"].append(_prompt_maxima(a, b))
        checks["top_example_values_above_their_kth"].append(_values_above_kth(a, b))
        for sign in ("pos", "neg"):
            checks[f"logit_lens_{sign}_ids"].append(_same_ids(a, b, sign, logit_k))
            checks[f"logit_lens_{sign}_values"].append(_logit_values(a, b, sign, logit_k))
        flips = int(ambiguity.tokens[int(i)])
        freq, tol = a["nonzero_count"] / n_tokens, DENSITY_QUANTUM + flips / n_tokens
        checks["activation_frequency"].append(_within(freq, b["frequency"], tol))
    out: dict[str, Any] = {"n_features_compared": len(common)}
    for name, note in _NOTES.items():
        rows = checks[name]
        out[name] = {
            "fraction_agreeing": float(np.mean([ok for ok, _, _ in rows])) if rows else None,
            "max_abs_diff": max((d for _, d, _ in rows), default=None),
            "n_values_compared": sum(n for _, _, n in rows),
            "disagreeing_features": [
                int(i) for i, (ok, _, _) in zip(common, rows, strict=True) if not ok
            ][:MAX_LISTED],
            "note": note,
        }
    out["activation_frequency"] |= _frequency_details(ours, theirs, common, n_tokens, ambiguity)
    return out


def _frequency_details(
    ours: dict[str, Any],
    theirs: dict[str, Any],
    common: list[str],
    n_tokens: int,
    ambiguity: FloatAmbiguity,
) -> dict[str, Any]:
    """Why the frequency check passes where it does: the measured float-ambiguous tokens, and
    both counts of each feature whose frequencies differ by more than theirs' quantisation."""
    beyond = [
        {
            "feature": int(i),
            "ours_count": ours[i]["nonzero_count"],
            "theirs_count": round(theirs[i]["frequency"] * n_tokens, 1),
            "float_ambiguous_tokens": int(ambiguity.tokens[int(i)]),
        }
        for i in common
        if abs(ours[i]["nonzero_count"] / n_tokens - theirs[i]["frequency"]) > DENSITY_QUANTUM
    ]
    return {
        "float_ambiguous_tokens_total": int(sum(ambiguity.tokens[int(i)] for i in common)),
        "features_with_float_ambiguous_tokens": sum(
            int(ambiguity.tokens[int(i)] > 0) for i in common
        ),
        "max_float_ambiguous_activation": ambiguity.max_flipped_activation,
        "max_hook_activation_diff": ambiguity.max_abs_resid_diff,
        "beyond_quantum": beyond[:MAX_LISTED],
    }


_NOTES = {
    "max_activation": "the feature's largest activation (both: top-1 example value), within "
    "SAEDashboard's rounding (4 then 3 decimals)",
    "top_example_prompt_maxima": "theirs: distinct max(values) of its top examples (each "
    "example is a whole prompt) above its k-th token value; ours: top example (peak) values. "
    "Every prompt maximum is a peak, so each must appear among ours; ties at the k-th value "
    "are left out",
    "top_example_values_above_their_kth": "ours' peak values above theirs' k-th token value "
    "must be among theirs' top-k token values (theirs takes plain top-k over all positions, "
    "adjacent tokens of one prompt allowed; ours takes peaks with non-overlapping windows, so "
    "below that value the lists differ by definition)",
    "logit_lens_pos_ids": "top-k positive logit token ids, as sets; a token in one side's "
    "top-k only agrees when its value is within rounding of the other side's k-th value (a tie "
    "at the boundary, which summation order breaks either way); max_abs_diff is the largest "
    "distance of such a token's value from that k-th value",
    "logit_lens_pos_values": "top-k positive logit values by token id, within theirs' "
    "3-decimal rounding (both: W_dec row @ W_U, no ln_final)",
    "logit_lens_neg_ids": "top-k negative logit token ids, as sets, ties at the k-th value "
    "as for the positive ones",
    "logit_lens_neg_values": "top-k negative logit values by token id, within rounding",
    "activation_frequency": "active non-BOS/EOS/PAD tokens over ALL tokens (theirs' "
    "denominator counts special tokens; ours' exported frequency divides by the non-special "
    "count, so here ours is nonzero_count / n_tokens), within theirs' 1e-5 quantisation plus "
    "float_ambiguous_tokens / n_tokens: the tokens where exactly one side fires when the same "
    "SAE encodes both sides' hook activations, each the way its side does (ours: the lean "
    "forward and a fused encode; theirs: TransformerLens's activations its run cached, "
    "SAELens's encode with the encoder columns its run used, W_dec's norms folded in at each "
    "feature batch). They differ by float32 rounding (max_hook_activation_diff), so a "
    "pre-activation within that of 0 fires on one side only (max_float_ambiguous_activation: "
    "the largest activation such a token has); the bench's random rows repeat short prefixes "
    "(the token after BOS is one of 253), so one such context flips several tokens at once. "
    "beyond_quantum lists both counts of each feature the allowance is needed for",
}


def _within(a: float, b: float, tol: float) -> Check:
    diff = abs(a - b)
    return diff <= tol, diff, 1


def _contained(values: list[float], candidates: list[float], tol: float) -> Check:
    """Is every value within ``tol`` of some candidate?"""
    diff = max((min(abs(v - c) for c in candidates) for v in values), default=0.0)
    return diff <= tol, diff, len(values)


def _prompt_maxima(a: dict[str, Any], b: dict[str, Any]) -> Check:
    kth = min(b["top_values"], default=0.0)
    maxima = [m for m in b["prompt_maxima"] if m > kth + 2 * VALUE_ROUNDING]
    return _contained(maxima, a["top_values"], VALUE_ROUNDING)


def _values_above_kth(a: dict[str, Any], b: dict[str, Any]) -> Check:
    kth = min(b["top_values"], default=0.0)
    mine = [v for v in a["top_values"] if v > kth + 2 * VALUE_ROUNDING]
    return _contained(mine, b["top_values"], VALUE_ROUNDING)


def _same_ids(a: dict[str, Any], b: dict[str, Any], sign: str, k: int) -> Check:
    ours = dict(zip(a[f"{sign}_ids"][:k], a[f"{sign}_values"][:k], strict=True))
    theirs = dict(zip(b[f"{sign}_ids"][:k], b[f"{sign}_values"][:k], strict=True))
    if set(ours) == set(theirs):
        return True, 0.0, 1
    if not ours or not theirs:
        return False, float("inf"), 1
    their_kth, our_kth = min(theirs.values(), key=abs), min(ours.values(), key=abs)
    gaps = [abs(v - their_kth) for t, v in ours.items() if t not in theirs]
    gaps += [abs(v - our_kth) for t, v in theirs.items() if t not in ours]
    gap = max(gaps)
    return gap <= ROUNDING, gap, 1


def _logit_values(a: dict[str, Any], b: dict[str, Any], sign: str, k: int) -> Check:
    theirs = dict(zip(b[f"{sign}_ids"][:k], b[f"{sign}_values"][:k], strict=True))
    pairs = zip(a[f"{sign}_ids"][:k], a[f"{sign}_values"][:k], strict=True)
    diffs = [abs(v - theirs[t]) for t, v in pairs if t in theirs]
    diff = max(diffs, default=0.0)
    return diff <= ROUNDING, diff, len(diffs)
