"""JSON of many rows at once: columns rendered in bulk, rows assembled by one byte gather.

A ``Rendered`` holds items that each end in a comma (``1.5,0.25,`` or ``"a","b",``), so the
items of a row (or of a list inside it) are one contiguous slice. Numbers are formatted by one
orjson call per column (the same formatter, so the same bytes, as ``jsonio.dumps``); strings
are escaped once per distinct string and gathered by index. A row template lists its keys as
orjson's ``OPT_SORT_KEYS`` orders them, its constants serialised once per chunk.
"""

from __future__ import annotations

import itertools
import operator
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from mistudio_common.errors import InvalidArgument

from mistudio_export.formats import jsonio

_COMMA = ord(",")
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_EMPTY = np.zeros(0, np.uint8)
GATHER_BLOCK = 1 << 22
"""Output bytes gathered per step (its index takes 4x or 8x that)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """Items each followed by a one-byte separator (a comma unless ``rows`` was given another):
    item k is ``data[starts[k] : starts[k + 1] - 1]``."""

    data: np.ndarray[Any, np.dtype[np.uint8]]
    starts: np.ndarray[Any, np.dtype[np.int64]]
    """[n_items + 1]; the last is the length of ``data``."""

    def span(self, first: int, stop: int) -> bytes:
        """Items ``first .. stop - 1`` as a JSON list body (commas between, none after)."""
        if stop <= first:
            return b""
        return self.data[self.starts[first] : self.starts[stop] - 1].tobytes()

    def list_fragment(self, first: int, stop: int) -> orjson.Fragment:
        """Items ``first .. stop - 1`` as a JSON list, to place in a document as it is."""
        return orjson.Fragment(b"[" + self.span(first, stop) + b"]")

    def lines(self, first: int, stop: int) -> bytes:
        """Items ``first .. stop - 1`` each with its separator (rows made with ``b"\\n"``)."""
        return self.data[self.starts[first] : self.starts[stop]].tobytes()


@dataclass(frozen=True, slots=True)
class Slot:
    """Per row, a byte range of ``rendered.data``: row r is ``[begin[r], end[r])``."""

    rendered: Rendered
    begin: np.ndarray[Any, np.dtype[np.int64]]
    end: np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True, slots=True)
class Quoted:
    """A slot written inside quotes (numbers the format stores as text)."""

    slot: Slot


@dataclass(frozen=True, slots=True)
class ListOf:
    """A slot written inside brackets (the row's items of a list column)."""

    slot: Slot


def _from_items(body: bytes) -> Rendered:
    """``body`` is orjson's ``[a,b,…]`` with the brackets dropped and a comma appended."""
    data = np.frombuffer(body, np.uint8)
    commas = np.flatnonzero(data == _COMMA)
    return Rendered(data, np.concatenate(([0], commas + 1)).astype(np.int64))


def numbers(column: np.ndarray[Any, Any]) -> Rendered:
    """Each number as ``jsonio.dumps`` writes it: float32 shortest form, ints as they are."""
    if len(column) == 0:
        return Rendered(_EMPTY, np.zeros(1, np.int64))
    text = orjson.dumps(np.ascontiguousarray(column), option=_NUMPY)
    return _from_items(text[1:-1] + b",")


def alphanumeric(strings: Sequence[str]) -> Rendered:
    """Each string quoted, as JSON writes strings of ASCII letters and digits alone (ids)."""
    text = "".join(strings)
    if not (text.isascii() and (text.isalnum() or not text)):
        raise ValueError("alphanumeric takes strings of ASCII letters and digits only")
    if not strings:
        return Rendered(_EMPTY, np.zeros(1, np.int64))
    return _from_items(('"' + '","'.join(strings) + '",').encode())


def float32_column(values: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """float64 (or float32) values in the precision the formats write; -0.0 becomes 0.0."""
    out = values.astype(np.float32)
    return out + np.float32(0.0)


def gather(
    pool: np.ndarray[Any, np.dtype[np.uint8]],
    begin: np.ndarray[Any, np.dtype[np.int64]],
    length: np.ndarray[Any, np.dtype[np.int64]],
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The pieces ``pool[begin[k] : begin[k] + length[k]]`` one after another.

    Done a block of pieces at a time, so the index (4 or 8 bytes per output byte) stays small;
    32-bit where the pool allows, which takes about a third off the time of this, the formats'
    largest bulk step."""
    ends = np.cumsum(length)
    out = np.empty(int(ends[-1]) if len(ends) else 0, np.uint8)
    kind = np.int32 if max(len(pool), len(out)) < 2**31 else np.int64
    cuts = np.searchsorted(ends, np.arange(GATHER_BLOCK, len(out), GATHER_BLOCK), "left")
    for first, stop in itertools.pairwise([0, *cuts.tolist(), len(length)]):
        if stop <= first:
            continue
        lengths = length[first:stop]
        at = int(ends[first] - length[first])
        placed = ends[first:stop] - lengths - at
        total = int(lengths.sum())
        index = np.repeat((begin[first:stop] - placed).astype(kind), lengths)
        index += np.arange(total, dtype=kind)
        np.take(pool, index, out=out[at : at + total])
    return out


class StringTable:
    """Distinct strings, each JSON-escaped once (with its trailing comma), coded by first use.

    Only ``codes`` adds strings, and only by appending, so a batch coded earlier renders
    correctly in another thread while later batches are being coded."""

    def __init__(self, *, empty_as_null: bool = False) -> None:
        self._codes: defaultdict[str, int] = defaultdict(itertools.count().__next__)
        self._escaped: list[bytes] = []
        self._empty_as_null = empty_as_null
        self._pool = _EMPTY
        self._begin = np.zeros(0, np.int64)
        self._length = np.zeros(0, np.int64)

    def codes(self, strings: Sequence[str]) -> list[int]:
        coded = list(map(self._codes.__getitem__, strings))
        self._grow()
        return coded

    def strings(self) -> list[str]:
        """Every string coded so far, by code."""
        return list(self._codes)

    def _grow(self) -> None:
        known = len(self._escaped)
        new = list(self._codes)[known:]
        if not new:
            return
        for s in new:
            self._escaped.append(
                (b"null" if self._empty_as_null and not s else jsonio.dumps(s, where="token"))
                + b","
            )
        self._pool = np.frombuffer(b"".join(self._escaped), np.uint8)
        self._length = np.fromiter(map(len, self._escaped), np.int64, len(self._escaped))
        self._begin = np.cumsum(self._length) - self._length

    def render(self, codes: np.ndarray[Any, Any]) -> Rendered:
        """The strings ``codes`` name, in order."""
        length = self._length[codes]
        data = gather(self._pool, self._begin[codes], length)
        return Rendered(data, np.concatenate(([0], np.cumsum(length))).astype(np.int64))


def each(rendered: Rendered, rows: np.ndarray[Any, Any] | None = None) -> Slot:
    """One item per row (item ``rows[r]``, or item r)."""
    n = len(rendered.starts) - 1
    index = np.arange(n) if rows is None else rows
    return Slot(rendered, rendered.starts[index], rendered.starts[index + 1] - 1)


def items(rendered: Rendered, first: np.ndarray[Any, Any], stop: np.ndarray[Any, Any]) -> Slot:
    """Row r's list holds items ``first[r] .. stop[r] - 1``."""
    begin = rendered.starts[first]
    end = np.where(stop > first, rendered.starts[stop] - 1, begin)
    return Slot(rendered, begin, end)


def column(values: Sequence[Any], kind: type) -> Rendered | None:
    """``values`` rendered one item each, as ``jsonio.dumps`` writes them; None where a value
    is not of type ``kind`` (int, bool or float) or, for floats, not writable (non-finite,
    beyond float32)."""
    if not set(map(type, values)) <= {kind}:
        return None
    if kind is not float:
        return numbers(np.array(values, np.int64 if kind is int else np.bool_))
    floats = np.array(values, np.float64)
    if not (np.abs(floats) < jsonio.F32_OVERFLOW).all():
        return None
    return numbers(float32_column(floats))


def record_fields(
    records: Sequence[Any], fields: Mapping[str, type], strings: StringTable
) -> dict[str, Slot] | None:
    """Per field of ``records`` (attribute name -> str, int, bool or float), one item per
    record, for a ``rows`` template; strings coded in ``strings``. None where a value is not
    of its field's type or not writable (non-finite, beyond float32, not Unicode): the
    caller's per-record path handles (and names) it."""
    template: dict[str, Slot] = {}
    for name, kind in fields.items():
        # C loops (no Python step per value): these lists hold most of a dashboard's values
        # that are not examples
        values = list(map(operator.attrgetter(name), records))
        if kind is str:
            if not set(map(type, values)) <= {str}:
                return None
            try:
                codes = strings.codes(values)
            except InvalidArgument:
                return None
            template[name] = each(strings.render(np.array(codes, np.int64)))
            continue
        rendered = column(values, kind)
        if rendered is None:
            return None
        template[name] = each(rendered)
    return template


def group_items(rendered: Rendered, lengths: Sequence[int]) -> Slot:
    """Row r's list holds the next ``lengths[r]`` items of ``rendered``."""
    ends = np.cumsum([0, *lengths])
    return items(rendered, ends[:-1], ends[1:])


def record_items(
    groups: Sequence[Sequence[Any]], fields: Mapping[str, type], strings: StringTable
) -> Slot | None:
    """Per group, its records as JSON objects keyed by ``fields`` (``record_fields``), the
    bytes ``jsonio.dumps`` writes for the equal dicts; None as ``record_fields``."""
    records = list(itertools.chain.from_iterable(groups))
    template = record_fields(records, fields, strings)
    if template is None:
        return None
    return group_items(rows(template, len(records)), list(map(len, groups)))


def record_lists(
    groups: Sequence[Sequence[Any]], fields: Mapping[str, type], strings: StringTable
) -> list[orjson.Fragment] | None:
    """``record_items`` as one JSON list fragment per group."""
    slot = record_items(groups, fields, strings)
    if slot is None:
        return None
    data = slot.rendered.data
    return [
        orjson.Fragment(b"[" + data[b:e].tobytes() + b"]")
        for b, e in zip(slot.begin.tolist(), slot.end.tolist(), strict=True)
    ]


def number_lists(lists: Sequence[Sequence[Any]], kind: type) -> Slot | None:
    """Per list, its numbers (all of type ``kind``) as a ``rows`` slot; None as ``column``."""
    rendered = column(list(itertools.chain.from_iterable(lists)), kind)
    return None if rendered is None else group_items(rendered, list(map(len, lists)))


def float_lists(documents: Sequence[dict[str, Any]], keys: Sequence[str]) -> None:
    """Replaces each document's lists of floats under ``keys`` by JSON list fragments, the
    bytes ``jsonio.dumps`` writes for them (float32 shortest), rendered by one call for all the
    documents of a batch instead of a conversion per list. A key is left as it is where a list
    holds a value that is not a float or not writable, so that serialising it names it."""
    for key in keys:
        lists = [document[key] for document in documents]
        rendered = column(list(itertools.chain.from_iterable(lists)), float)
        if rendered is None:
            continue
        bounds = itertools.pairwise([0, *np.cumsum(list(map(len, lists))).tolist()])
        for document, (first, stop) in zip(documents, bounds, strict=True):
            document[key] = rendered.list_fragment(first, stop)


Template = Mapping[str, Any]
"""Key -> a Slot, Quoted or ListOf (per row), a nested Template, or a constant (any JSON value)."""


def _pieces(template: Template, out: list[bytes | Slot]) -> None:
    """Flattens ``template`` into constant bytes and slots in orjson's sorted-key order."""
    out.append(b"{")
    for n, key in enumerate(sorted(template)):
        out.append((b"," if n else b"") + jsonio.dumps(key) + b":")
        value = template[key]
        if isinstance(value, Slot):
            out.append(value)
        elif isinstance(value, Quoted):
            out += [b'"', value.slot, b'"']
        elif isinstance(value, ListOf):
            out += [b"[", value.slot, b"]"]
        elif isinstance(value, Mapping):
            _pieces(value, out)
        else:
            out.append(jsonio.dumps(value, where=f"constant {key}"))
    out.append(b"}")


def rows(template: Template, n_rows: int, separator: bytes = b",") -> Rendered:
    """One JSON object per row, as ``jsonio.dumps`` of the equal dict would write it, each
    followed by ``separator`` (a comma for items of a list, a newline for JSON Lines)."""
    flat: list[bytes | Slot] = []
    _pieces(template, flat)
    merged: list[bytes | Slot] = []
    for piece in [*flat, separator]:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += piece
        else:
            merged.append(piece)
    pools: list[np.ndarray[Any, np.dtype[np.uint8]]] = []
    begins, lengths = [], []
    base = 0
    seen: dict[int, int] = {}
    for piece in merged:
        if isinstance(piece, bytes):
            pools.append(np.frombuffer(piece, np.uint8))
            begins.append(np.full(n_rows, base, np.int64))
            lengths.append(np.full(n_rows, len(piece), np.int64))
            base += len(piece)
            continue
        data = piece.rendered.data
        if id(data) not in seen:
            seen[id(data)] = base
            pools.append(data)
            base += len(data)
        begins.append(piece.begin + seen[id(data)])
        lengths.append(piece.end - piece.begin)
    pool = np.concatenate(pools) if pools else _EMPTY
    begin = np.stack(begins, axis=1).reshape(-1)  # [n_rows * n_pieces], row-major
    length = np.stack(lengths, axis=1)
    data = gather(pool, begin, length.reshape(-1))
    ends = np.cumsum(length.sum(axis=1))
    return Rendered(data, np.concatenate(([0], ends)).astype(np.int64))
