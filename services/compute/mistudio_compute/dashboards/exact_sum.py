"""Exact sums of float32 values and of their squares, as wide integers in int64 limbs.

A float sum depends on the order of its terms, so two shards merged would differ from one pass in
the last bits. Here every term is an integer multiple of the smallest float32 (squares: of its
square), and limb ``j`` of a row holds the terms whose lowest bit is in ``8j ... 8j + 7``, each
shifted by that remainder: a term of at most 24 significant bits then adds less than 2**31 (cheap
int32 work per term), and a limb holds 2**32 terms (keys.MAX_POSITIONS) without overflow. Adding
limbs is integer addition, exact and associative, so a sum is the same whatever the batches,
shards and merge order; its float64 value is read once, at the end.
"""

from __future__ import annotations

from typing import Any

import torch

_BAND_BITS = 8
_BAND_SHIFT = 3
"""log2 of _BAND_BITS: a term's limb is its lowest bit >> 3."""
_MANTISSA_BITS = 23
_SMALLEST_EXPONENT = 149
"""The smallest positive float32 is 2**-149: every float32 is an integer times it."""
VALUE_LIMBS = 32
"""Limbs of a sum of float32 values: a term's lowest bit is at most 253."""
SQUARE_LIMBS = 67
"""Limbs of a sum of squares: a square is three 24-bit terms, the highest at 2 * 253 + 24."""


def add_values(acc: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """acc [R, VALUE_LIMBS] += float32 values [A] > 0 at rows [A]."""
    mantissa, bit = _split(values)
    _add(acc, _host(rows), mantissa, bit)


def add_moments(
    total: torch.Tensor, total_sq: torch.Tensor, rows: torch.Tensor, values: torch.Tensor
) -> None:
    """total [R, VALUE_LIMBS] += float32 values [A] > 0 at rows [A], and total_sq
    [R, SQUARE_LIMBS] += their squares (the values are split once for both)."""
    mantissa, bit = _split(values)
    rows = _host(rows)
    _add(total, rows, mantissa, bit)
    high, low = mantissa >> 12, mantissa & 0xFFF  # m**2 = h**2 * 2**24 + 2hl * 2**12 + l**2
    bit = 2 * bit
    _add(total_sq, rows, high * high, bit + 24)
    _add(total_sq, rows, high * low, bit + 13)
    _add(total_sq, rows, low * low, bit)


def value_of(acc: torch.Tensor, squares: bool = False) -> torch.Tensor:
    """The float64 values [R] of sums acc [R, limbs]: carries are propagated first, so the
    result depends only on the exact sum (it is within one rounding of it)."""
    limbs = acc.clone()
    for j in range(limbs.shape[1] - 1):
        limbs[:, j + 1] += limbs[:, j] >> _BAND_BITS
        limbs[:, j] &= (1 << _BAND_BITS) - 1
    scale = 2 * _SMALLEST_EXPONENT if squares else _SMALLEST_EXPONENT
    out = torch.zeros(limbs.shape[0], dtype=torch.float64, device=acc.device)
    for j in reversed(range(limbs.shape[1])):  # most significant first, one fixed order
        out += limbs[:, j].double() * 2.0 ** (_BAND_BITS * j - scale)
    return out


def _host(x: torch.Tensor) -> Any:
    """A CPU tensor as a numpy array of the same memory (else the tensor): the integer work below
    is written in operators both share, and numpy's cost several times less CPU than torch's,
    each of which allocates and spreads over threads."""
    return x.numpy() if x.device.type == "cpu" else x


def _split(values: torch.Tensor) -> tuple[Any, Any]:
    """float32 values [A] > 0 as int32 mantissa [A] (< 2**24) * 2**(bit [A] - 149)."""
    bits = _host(values.float().contiguous().view(torch.int32))
    biased = bits >> _MANTISSA_BITS
    normal = biased.clip(max=1)  # 0 for subnormals: no hidden bit, same exponent as 1
    mantissa = (bits & ((1 << _MANTISSA_BITS) - 1)) | (normal << _MANTISSA_BITS)
    return mantissa, biased - normal


def _add(acc: torch.Tensor, rows: Any, term: Any, bit: Any) -> None:
    """acc += term [A] (int32, < 2**24) * 2**bit [A] (rows, term and bit: ``_host`` arrays)."""
    shifted = torch.as_tensor(term << (bit & (_BAND_BITS - 1)), device=acc.device)  # < 2**31
    slot = torch.as_tensor(rows * acc.shape[1] + (bit >> _BAND_SHIFT), device=acc.device)
    acc.view(-1).index_add_(0, slot, shifted.to(torch.int64))
