"""Cross-field checks shared by the formats: examples, histograms, parallel arrays."""

from __future__ import annotations

import math
from typing import Any

from mistudio_export.formats.jsonio import pointer
from mistudio_export.validation.context import FileContext
from mistudio_export.validation.report import Severity

ABS_TOL = 1e-5
"""Covers SAEDashboard's rounding to 5 decimals."""
REL_TOL = 1e-6


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def qualifying_outside_bin(example: dict[str, Any], keys: tuple[str, str, str]) -> str | None:
    """Why a quantile example's qualifying token is not in its bin, or None. Neuronpedia's page
    moves such a row to another section; SAEDashboard names the token it sampled in the bin."""
    index_key, lo_key, hi_key = keys
    q, lo, hi, values = (example.get(k) for k in (index_key, lo_key, hi_key, "values"))
    if not (isinstance(lo, int | float) and isinstance(hi, int | float)) or lo == -1:
        return None
    if not (isinstance(q, int) and isinstance(values, list) and 0 <= q < len(values)):
        return None
    value = values[q]
    if not isinstance(value, int | float):
        return None
    if lo <= value <= hi or close(value, lo) or close(value, hi):
        return None
    return f"qualifying token {q} has {value}, outside its bin [{lo}, {hi}]"


def get_list(obj: Any, key: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def get_dict(obj: Any, key: str) -> dict[str, Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def get_number(obj: Any, key: str) -> float | None:
    """The finite number under ``key``, else None."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


_NUMBER_TYPES = frozenset({int, float})


def numbers(value: Any) -> list[float] | None:
    """The list if it holds only finite numbers, else None (the schema or scan reports why)."""
    if not isinstance(value, list) or not _NUMBER_TYPES.issuperset(map(type, value)):
        return None
    try:
        return value if math.isfinite(sum(value)) else None
    except OverflowError:
        return None


def same_length(ctx: FileContext, obj: dict[str, Any], base: list[Any], *keys: str) -> bool:
    """Report parallel arrays of different lengths; True when all present ones agree."""
    lengths = {k: len(obj[k]) for k in keys if isinstance(obj.get(k), list)}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}={n}" for k, n in lengths.items())
        ctx.report("LENGTH_MISMATCH", pointer(base), f"array lengths differ: {shown}")
        return False
    return True


def check_example(
    ctx: FileContext,
    ex: Any,
    base: list[Any],
    *,
    max_key: str | None = None,
    index_key: str | None = None,
    min_key: str | None = None,
) -> float | None:
    """Check one activation example; returns max(values) when the values are usable."""
    if not isinstance(ex, dict):
        return None
    values = numbers(ex.get("values"))
    if not same_length(ctx, ex, base, "tokens", "values", "token_ids") or values is None:
        return None
    if not values:
        where = pointer([*base, "values"])
        if not ctx.already_reported(where):
            ctx.report("EMPTY_ARRAY", where, "example has no values")
        return None
    top, low = max(values), min(values)
    if max_key is not None:
        _check_stored(ctx, ex, base, max_key, top, "MAX_VALUE_MISMATCH", "max(values)")
    if min_key is not None:
        _check_stored(ctx, ex, base, min_key, low, "MIN_VALUE_MISMATCH", "min(values)")
    if index_key is not None:
        _check_argmax(ctx, ex, base, index_key, values, top)
    return top


def _check_stored(
    ctx: FileContext, ex: dict[str, Any], base: list[Any], key: str, actual: float, code: str,
    what: str,
) -> None:  # fmt: skip
    stored = ex.get(key)
    if isinstance(stored, bool) or not isinstance(stored, int | float):
        return
    if not math.isfinite(stored) or not close(stored, actual):

        def repair() -> str:
            ex[key] = actual
            return f"{key} {stored} -> {actual}"

        ctx.report(
            code, pointer([*base, key]), f"{key}={stored} but {what}={actual}", repair=repair
        )


def _check_argmax(
    ctx: FileContext, ex: dict[str, Any], base: list[Any], key: str, values: list[float], top: float
) -> None:
    stored = ex.get(key)
    if isinstance(stored, bool) or not isinstance(stored, int):
        return
    if 0 <= stored < len(values) and close(values[stored], top):
        return
    first = values.index(top)

    def repair() -> str:
        ex[key] = first
        return f"{key} {stored} -> {first}"

    ctx.report(
        "MAX_INDEX_MISMATCH",
        pointer([*base, key]),
        f"{key}={stored} but the maximum {top} is at {first}",
        repair=repair,
    )


def check_edges(ctx: FileContext, edges: Any, where: str, *, strict: bool) -> None:
    """Bin edges must not decrease (bin centres must increase: ``strict``)."""
    values = numbers(edges)
    if values is None:
        return
    for i in range(1, len(values)):
        if values[i] < values[i - 1] or (strict and values[i] == values[i - 1]):
            ctx.report(
                "HISTOGRAM_EDGES",
                f"{where}/{i}",
                f"{values[i]} after {values[i - 1]}: bins must be in increasing order",
            )
            return


def check_histogram(
    ctx: FileContext,
    hist: Any,
    base: list[Any],
    *,
    total_key: str,
    severity: Severity = Severity.ERROR,
) -> int | None:
    """PRD-style histogram {bin_edges, counts, total_key}; returns sum(counts) when usable."""
    if not isinstance(hist, dict):
        return None
    edges, counts = numbers(hist.get("bin_edges")), numbers(hist.get("counts"))
    if edges is None or counts is None:
        return None
    if (edges or counts) and len(edges) != len(counts) + 1:
        ctx.report(
            "HISTOGRAM_EDGES",
            pointer([*base, "bin_edges"]),
            f"{len(counts)} counts need {len(counts) + 1} edges, found {len(edges)}",
        )
    check_edges(ctx, edges, pointer([*base, "bin_edges"]), strict=False)
    total = int(sum(counts))
    stored = hist.get(total_key)
    if isinstance(stored, int) and not isinstance(stored, bool) and stored != total:

        def repair() -> str:
            hist[total_key] = total
            return f"{total_key} {stored} -> {total}"

        ctx.report(
            "HISTOGRAM_TOTAL_MISMATCH",
            pointer([*base, total_key]),
            f"counts sum to {total} but {total_key}={stored}",
            severity=severity,
            repair=repair,
        )
    return total
