"""Protobuf wire bytes of many records at once, written from numpy columns.

Finalisation writes every example of a chunk this way and merges each feature's bytes into its
message with one parse, instead of building a message per example from Python lists. The
caller sizes every field first (``varint_sizes``), places it, then writes each column of
values once at its offsets (``put_*``). Every field is written, zeros included; the parse keeps
the same values, so the messages (and their deterministic serialisation) equal those that
building field by field gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Bytes = np.ndarray[Any, np.dtype[np.uint8]]
Ints = np.ndarray[Any, np.dtype[np.int64]]

VARINT, I64, LEN, I32 = 0, 1, 2, 5
"""Wire types."""
_SEVEN, _LOW7 = np.uint64(7), np.uint64(0x7F)  # a varint byte: 7 bits, then "more follow"
_LIMITS = np.uint64(1) << (np.arange(1, 10, dtype=np.uint64) * _SEVEN)
"""The least value that takes 2, 3, ..., 10 bytes."""


def key(field: int | Ints, wire_type: int) -> Any:
    """The key byte(s) of ``field`` (numbers below 16: one byte each)."""
    return (np.left_shift(field, 3) | wire_type).astype(np.uint8)


def varint_sizes(values: np.ndarray) -> Ints:
    """Bytes of each value's varint; a negative value takes its 64-bit two's complement. One
    comparison per size up to the largest value's (most values here are small)."""
    v = np.asarray(values, np.int64).view(np.uint64)
    sizes = np.ones(v.shape, np.int64)
    top = v.max(initial=np.uint64(0))
    for limit in _LIMITS:
        if limit > top:
            break
        sizes += v >= limit
    return sizes


def put_varints(out: Bytes, at: Ints, values: np.ndarray, sizes: Ints | None = None) -> Ints:
    """Writes each value's varint at ``at``; returns the offsets after them. Byte j is written
    for the values longer than j only, so the many short values cost one pass."""
    v = np.asarray(values, np.int64).view(np.uint64)
    n = varint_sizes(v.view(np.int64)) if sizes is None else sizes
    after = at + n
    more = n > 1  # a byte follows
    out[at] = ((v & _LOW7) | (more.astype(np.uint64) << _SEVEN)).astype(np.uint8)
    for j in range(1, int(n.max(initial=1))):
        longer = np.flatnonzero(more)
        v, n, at = v[longer] >> _SEVEN, n[longer], at[longer]
        more = n > j + 1
        out[at + j] = ((v & _LOW7) | (more.astype(np.uint64) << _SEVEN)).astype(np.uint8)
    return after


def put_bytes(out: Bytes, at: Ints, data: Bytes, lengths: Ints) -> None:
    """Writes record r (``lengths[r]`` consecutive bytes of ``data``) at ``at[r]``."""
    starts = np.cumsum(lengths) - lengths
    out[np.repeat(at - starts, lengths) + np.arange(len(data))] = data


def put_float32s(out: Bytes, at: Ints, values: np.ndarray) -> None:
    raw = np.ascontiguousarray(values, dtype="<f4").view(np.uint8).reshape(-1, 4)
    out[at[:, None] + np.arange(4)] = raw


def put_float64s(out: Bytes, at: Ints, values: np.ndarray) -> None:
    raw = np.ascontiguousarray(values, dtype="<f8").view(np.uint8).reshape(-1, 8)
    out[at[:, None] + np.arange(8)] = raw


def utf8(texts: list[str]) -> tuple[Bytes, Ints]:
    """The UTF-8 bytes of the texts and each one's length: one encode for all, cut at
    separators no text holds."""
    raw = np.frombuffer("\0".join(texts).encode(), np.uint8)
    cuts = np.flatnonzero(raw == 0)
    if len(cuts) != len(texts) - 1:  # a text holds a NUL: measure each instead
        lengths = np.fromiter((len(t.encode()) for t in texts), np.int64, len(texts))
        return np.frombuffer("".join(texts).encode(), np.uint8), lengths
    lengths = np.diff(np.concatenate(([-1], cuts, [len(raw)]))) - 1
    return np.delete(raw, cuts), lengths.astype(np.int64)


def exclusive_cumsum(x: Ints) -> Ints:
    return np.cumsum(x) - x


@dataclass(frozen=True, slots=True)
class Column:
    """One scalar field of every record: ints (VARINT), float32s (I32), float64s (I64) or
    texts (LEN: their UTF-8 bytes one after another, ``lengths`` bytes each)."""

    field: int
    wire_type: int
    values: np.ndarray  # [N]; LEN: [sum(lengths)] uint8
    lengths: Ints | None = None  # [N] LEN only

    @classmethod
    def text(cls, field: int, texts: list[str]) -> Column:
        data, lengths = utf8(texts)
        return cls(field, LEN, data, lengths)

    def sizes(self) -> Ints:
        """Bytes of each record's field: key and value."""
        if self.wire_type == VARINT:
            return 1 + varint_sizes(self.values)
        if self.wire_type == LEN:
            assert self.lengths is not None
            return 1 + varint_sizes(self.lengths) + self.lengths
        return np.full(len(self.values), 5 if self.wire_type == I32 else 9, np.int64)

    def write(self, out: Bytes, at: Ints) -> Ints:
        """Writes each record's field at ``at``; returns the offsets after them."""
        out[at] = key(self.field, self.wire_type)
        at = at + 1
        if self.wire_type == VARINT:
            return put_varints(out, at, self.values)
        if self.wire_type == LEN:
            assert self.lengths is not None
            at = put_varints(out, at, self.lengths)
            put_bytes(out, at, self.values, self.lengths)
            return at + self.lengths
        if self.wire_type == I32:
            put_float32s(out, at, self.values)
            return at + 4
        put_float64s(out, at, self.values)
        return at + 8


@dataclass(frozen=True, slots=True)
class PerFeature:
    """Wire bytes of a part's features one after another: feature i's are ``data[bounds[i] :
    bounds[i + 1]]``, to merge into its ``FeatureDashboard``."""

    data: bytes
    bounds: list[int]  # [n_features + 1]

    @classmethod
    def empty(cls, n_features: int) -> PerFeature:
        return cls(b"", [0] * (n_features + 1))

    def of(self, i: int) -> bytes:
        return self.data[self.bounds[i] : self.bounds[i + 1]]


def records(field: Ints, columns: Sequence[Column], feature: Ints, n_features: int) -> PerFeature:
    """Record r as a message in field ``field[r]`` of feature ``feature[r]``'s message, its
    columns' fields in their order, every value written (zeros included). The records come
    grouped by feature, ascending, each feature's in its repeated fields' order."""
    sizes = [column.sizes() for column in columns]
    body = np.sum(sizes, axis=0) if sizes else np.zeros(len(feature), np.int64)  # [N]
    size = 1 + varint_sizes(body) + body
    out = np.zeros(int(size.sum()), np.uint8)
    at = exclusive_cumsum(size)
    out[at] = key(field, LEN)
    at = put_varints(out, at + 1, body)
    for column in columns:
        at = column.write(out, at)
    ends = np.cumsum(np.bincount(feature, weights=size, minlength=n_features)).astype(np.int64)
    return PerFeature(out.tobytes(), [0, *ends.tolist()])
