"""A batch's activation examples decoded from their wire bytes all at once, with no Python object
per example or per token: the reading side of compute's ``dashboards.example_wire``.

Every example is walked in step with the others, a field at a time, in the order protobuf's own
serialisation writes ``ActivationExample`` (field number order, the repeated token strings
first, a field at its default left out): each step tests the one-byte tag at every example's
cursor, reads what the present ones hold and moves their cursors on. An example of any other
layout (another order, a repeated field split, an unknown field, a scalar list not packed)
ends with its cursor short of its end, and a record running past its example is malformed:
either way ``decode_examples`` gives None, and the caller reads the batch through the message
classes, which take every valid encoding and refuse the malformed ones.

Token strings stay spans of the bytes. ``TokenCodes`` codes them through their token ids: a
token's string is its id's, but for pieces of a character split over tokens, so a span is
compared with the string its id had before (its first eight bytes as one integer, and its
length), and only the others are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mistudio_export.formats.bulk_json import StringTable

Bytes = np.ndarray[Any, np.dtype[np.uint8]]
Ints = np.ndarray[Any, np.dtype[np.int64]]
Floats = np.ndarray[Any, np.dtype[np.float64]]

_VARINT, _I32, _LEN = 0, 5, 2
_TOKENS, _IDS, _VALUES = 1 << 3 | _LEN, 2 << 3 | _LEN, 3 << 3 | _LEN
_MAX_VALUE, _MAX_TOKEN_INDEX = 4 << 3 | _I32, 5 << 3 | _VARINT
_SOURCE, _QUALIFYING = 6 << 3 | _LEN, 7 << 3 | _VARINT
_DATASET, _ROW, _OFFSET = 1 << 3 | _LEN, 2 << 3 | _VARINT, 3 << 3 | _VARINT
"""ActivationExample's and SourceRef's tags (field number << 3 | wire type): one byte each."""
KEY_BYTES = 8
"""Bytes of a token string compared as one integer; a longer string is decoded."""
KNOWN_IDS = 1 << 21
"""Token ids remembered (a table of 24 MB at most): past every vocabulary in use; a larger id,
like a negative one, has its string decoded."""


class _Malformed(Exception):
    """A record running past its example, or a varint over ten bytes."""


@dataclass(frozen=True, slots=True)
class ExampleFields:
    """Every example's fields; spans index ``data``. Per example [N]; per token [T]."""

    data: Bytes
    """The examples' bytes, one after another."""
    token_count: Ints
    token_at: Ints  # [T]
    token_len: Ints  # [T]
    ids_at: Ints
    ids_len: Ints
    """The packed token ids' bytes."""
    values_at: Ints
    values_len: Ints
    """The packed float32 values' bytes."""
    max_value: np.ndarray[Any, np.dtype[np.float32]]
    max_token_index: Ints
    qualifying_token_index: Ints
    dataset_at: Ints
    dataset_len: Ints
    source_row: Ints
    source_offset: Ints

    def token_ids(self) -> tuple[Ints, Ints]:
        """Every example's token ids, as protobuf reads int32s, and how many each holds. Raises
        ValueError for a varint cut off by its record's end or longer than ten bytes."""
        ids, counts = packed_varints(self._bytes_of(self.ids_at, self.ids_len), self.ids_len)
        return _as_int32(ids), counts

    def values(self) -> tuple[Floats, Ints]:
        """Every example's float32 values as float64s, and how many each holds."""
        if np.any(self.values_len % 4):
            raise ValueError("a packed float field's length is not a multiple of 4")
        data = self._bytes_of(self.values_at, self.values_len)
        return np.frombuffer(data, "<f4").astype(np.float64), self.values_len // 4

    def datasets(self) -> tuple[StringTable, Ints]:
        """The examples' dataset names coded in order of appearance: the examples naming the
        first one's are found by comparing bytes; only the others are decoded. Raises
        UnicodeDecodeError for a name that is not UTF-8."""
        names = StringTable()
        codes = np.full(len(self.dataset_at), -1, np.int64)
        if not len(codes):
            return names, codes
        at, length = self.dataset_at, self.dataset_len
        first = self.data[at[0] : at[0] + length[0]]
        alike = np.flatnonzero(length == length[0])
        window = self.data[at[alike][:, None] + np.arange(length[0])] if length[0] else None
        same = alike if window is None else alike[(window == first).all(axis=1)]
        codes[same] = names.codes([first.tobytes().decode()])[0]
        others = np.flatnonzero(codes < 0)
        codes[others] = names.codes(_decoded(self.data, at[others], length[others]))
        return names, codes

    def _bytes_of(self, at: Ints, length: Ints) -> bytes:
        """The spans' bytes, one after another."""
        before = np.cumsum(length) - length
        return self.data[np.repeat(at - before, length) + np.arange(int(length.sum()))].tobytes()


def decode_examples(examples: list[bytes]) -> ExampleFields | None:
    """The fields of every serialised ``ActivationExample`` of ``examples``; None where one is
    laid out otherwise than protobuf serialises it, or malformed (see the module's notes)."""
    data = np.frombuffer(b"".join(examples), np.uint8)
    lengths = np.fromiter(map(len, examples), np.int64, len(examples))
    end = np.cumsum(lengths)
    pos = end - lengths
    try:
        count, token_at, token_len = _strings(data, pos, end, _TOKENS)
        ids = _span(data, pos, end, _IDS)
        values = _span(data, pos, end, _VALUES)
        max_value = _fixed32(data, pos, end, _MAX_VALUE)
        max_token_index = _as_int32(_varint(data, pos, end, _MAX_TOKEN_INDEX))
        source_at, source_len = _span(data, pos, end, _SOURCE)
        qualifying = _as_int32(_varint(data, pos, end, _QUALIFYING))
        if np.any(pos != end):
            return None
        pos, end = source_at.copy(), source_at + source_len
        dataset = _span(data, pos, end, _DATASET)
        row = _varint(data, pos, end, _ROW)
        offset = _as_int32(_varint(data, pos, end, _OFFSET))
        if np.any(pos != end):
            return None
    except _Malformed:
        return None
    return ExampleFields(
        data, count, token_at, token_len, *ids, *values, max_value, max_token_index, qualifying,
        *dataset, row, offset,
    )  # fmt: skip


def _at(data: Bytes, pos: Ints, end: Ints, tag: int) -> Ints:
    """The examples whose cursor is at a ``tag`` record."""
    inside = pos < end
    if not inside.any():
        return np.zeros(0, np.int64)
    return np.flatnonzero(inside & (data[np.where(inside, pos, 0)] == tag))


def _varints(data: Bytes, at: Ints, stop: Ints) -> tuple[np.ndarray, Ints]:
    """The varint at each of ``at`` (as uint64) and where each ends."""
    value = np.zeros(len(at), np.uint64)
    pos = at.copy()
    live = np.arange(len(at))
    for k in range(10):
        if not len(live):
            return value, pos
        p = pos[live]
        if np.any(p >= stop[live]):
            raise _Malformed
        byte = data[p]
        value[live] |= (byte & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        pos[live] = p + 1
        live = live[byte >= 0x80]
    if len(live):
        raise _Malformed
    return value, pos


def _span(data: Bytes, pos: Ints, end: Ints, tag: int) -> tuple[Ints, Ints]:
    """Where a length-delimited field's bytes begin and how many (0, 0 when absent); the
    cursors of the examples that had it move past it."""
    at, length = np.zeros(len(pos), np.int64), np.zeros(len(pos), np.int64)
    found = _at(data, pos, end, tag)
    if len(found):
        size, after = _varints(data, pos[found] + 1, end[found])
        size = size.astype(np.int64)
        if np.any(size < 0) or np.any(after + size > end[found]):
            raise _Malformed
        at[found], length[found], pos[found] = after, size, after + size
    return at, length


def _strings(data: Bytes, pos: Ints, end: Ints, tag: int) -> tuple[Ints, Ints, Ints]:
    """A repeated string field's records, a round each: per example their count, and each
    one's span, examples in order and records in order within them."""
    count = np.zeros(len(pos), np.int64)
    rounds: list[tuple[Ints, Ints, Ints]] = []  # the examples with a k-th record, its span
    examples = np.arange(len(pos))
    while len(examples := examples[_at(data, pos[examples], end[examples], tag)]):
        size, after = _varints(data, pos[examples] + 1, end[examples])
        length = size.astype(np.int64)
        if np.any(length < 0) or np.any(after + length > end[examples]):
            raise _Malformed
        rounds.append((examples, after, length))
        pos[examples] = after + length
        count[examples] += 1
    first = np.cumsum(count) - count
    token_at = np.empty(int(count.sum()), np.int64)
    token_len = np.empty_like(token_at)
    for k, (examples, at, length) in enumerate(rounds):
        token_at[first[examples] + k], token_len[first[examples] + k] = at, length
    return count, token_at, token_len


def _varint(data: Bytes, pos: Ints, end: Ints, tag: int) -> Ints:
    """A varint field's value (0 when absent) as int64; the cursors move past it."""
    out = np.zeros(len(pos), np.int64)
    found = _at(data, pos, end, tag)
    if len(found):
        value, pos[found] = _varints(data, pos[found] + 1, end[found])
        out[found] = value.view(np.int64)
    return out


def packed_varints(data: bytes, lengths: Ints) -> tuple[Ints, Ints]:
    """The varints of ``data`` as 64-bit two's complement, and how many lie in each of the
    records ``data`` is cut into (``lengths`` bytes each, in order). Raises ValueError for a
    varint cut off by its record's end or longer than ten bytes."""
    raw = np.frombuffer(data, np.uint8)
    last = raw < 0x80  # the last byte of each varint
    ends = np.cumsum(lengths)
    ended = np.concatenate(([0], np.cumsum(last)))
    counts = ended[ends] - ended[ends - lengths]
    if np.any(~last[ends[lengths > 0] - 1]):
        raise ValueError("a packed varint field ends inside a varint")
    if last.all():  # every varint one byte: the common case of small ids
        return raw.astype(np.int64), counts
    stops = np.flatnonzero(last) + 1
    starts = np.concatenate(([0], stops[:-1]))
    shifts = (np.arange(len(raw)) - np.repeat(starts, stops - starts)) * 7
    if shifts.max() > 63:
        raise ValueError("a varint is longer than ten bytes")
    parts = (raw & 0x7F).astype(np.uint64) << shifts.astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts).view(np.int64), counts


def _as_int32(value: Ints) -> Ints:
    """As protobuf reads an int32 from a varint: the low 32 bits, signed."""
    return value.astype(np.int32).astype(np.int64)


def _decoded(data: Bytes, at: Ints, length: Ints) -> list[str]:
    """The spans' bytes as strings; UnicodeDecodeError for one that is not UTF-8."""
    spans = zip(at.tolist(), length.tolist(), strict=True)
    return [data[a : a + n].tobytes().decode() for a, n in spans]


def _fixed32(data: Bytes, pos: Ints, end: Ints, tag: int) -> np.ndarray:
    """A float field's value (0.0 when absent); the cursors move past it."""
    out = np.zeros(len(pos), np.float32)
    found = _at(data, pos, end, tag)
    if len(found):
        at = pos[found] + 1
        if np.any(at + 4 > end[found]):
            raise _Malformed
        out[found] = data[at[:, None] + np.arange(4)].copy().view("<f4").ravel()
        pos[found] = at + 4
    return out


class TokenCodes:
    """Codes in ``table`` of token strings given as spans with their token ids, for the batches
    of one read: each id's first string is decoded and remembered, later spans equal to it take
    its code without being decoded."""

    def __init__(self, table: StringTable) -> None:
        self.table = table
        self._key = np.zeros(0, np.uint64)  # per id: its string's first bytes, or unknown
        self._length = np.zeros(0, np.int64)  # -1: no string seen for the id
        self._code = np.zeros(0, np.int64)

    def codes(self, data: Bytes, at: Ints, length: Ints, ids: Ints) -> Ints:
        """The code of each span (``ids``: each one's token id, -1 where unknown). Raises
        UnicodeDecodeError for a string that is not UTF-8."""
        key = _keys(data, at, length)
        known = (ids >= 0) & (ids < KNOWN_IDS)
        self._grow(max(int(ids[known].max(initial=-1)) + 1, 1))  # id 0's row stands in
        row = np.where(known, ids, 0)
        same = known & (length <= KEY_BYTES) & (self._length[row] == length)
        same &= self._key[row] == key
        out = np.where(same, self._code[row], -1)
        others = np.flatnonzero(~same)
        if len(others):
            out[others] = self.table.codes(_decoded(data, at[others], length[others]))
            learn = others[known[others] & (length[others] <= KEY_BYTES)]
            learn = learn[self._length[ids[learn]] < 0]
            new, first = np.unique(ids[learn], return_index=True)
            self._key[new], self._length[new] = key[learn[first]], length[learn[first]]
            self._code[new] = out[learn[first]]
        return out

    def _grow(self, n_ids: int) -> None:
        more = n_ids - len(self._length)
        if more > 0:
            self._key = np.concatenate([self._key, np.zeros(more, np.uint64)])
            self._length = np.concatenate([self._length, np.full(more, -1, np.int64)])
            self._code = np.concatenate([self._code, np.zeros(more, np.int64)])


def _keys(data: Bytes, at: Ints, length: Ints) -> np.ndarray:
    """Each span's first ``KEY_BYTES`` bytes as one little-endian integer, zeros past its end
    (one unaligned read per span from a view of the bytes at every offset)."""
    padded = np.concatenate([data, np.zeros(KEY_BYTES, np.uint8)])
    at_offset = np.ndarray((len(data) + 1,), dtype="<u8", buffer=padded, strides=(1,))
    shift = (8 * np.minimum(length, KEY_BYTES - 1)).astype(np.uint64)
    keep = np.where(length >= KEY_BYTES, ~np.uint64(0), (np.uint64(1) << shift) - np.uint64(1))
    return at_offset[at] & keep
