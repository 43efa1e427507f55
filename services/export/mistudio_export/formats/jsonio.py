"""Deterministic JSON and JSON Lines, gzipped where a file name ends in .gz: equal input,
byte-identical files.

Keys are sorted. Floats are written as the shortest decimal that round-trips their float32 value
(the precision the dashboards are computed in), or rounded to a fixed number of decimals where a
format asks for it. NaN and Inf are never written: serialising one raises NonFiniteValue naming
where it sits, and the validator reports and repairs files that other tools wrote with them.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from mistudio_common.errors import InvalidArgument

from mistudio_export import deflate

_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY


class NonFiniteValue(InvalidArgument):
    """A NaN or Inf reached a writer; ``field`` holds its JSON pointer."""


def pointer(parts: Iterable[str | int]) -> str:
    """RFC 6901 JSON pointer for a path of keys and indices."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def not_finite(where: str, path: list[str | int], value: object) -> NonFiniteValue:
    ptr = pointer(path)
    return NonFiniteValue(
        f"{where}: {value} at {ptr or '/'}",
        field=ptr,
        fix="recompute the value (a dead feature has 0, not NaN); exports never carry NaN or Inf",
    )


F32_OVERFLOW = 2.0**128 - 2.0**103
"""Magnitudes from here on round to float32 infinity."""
_FLOAT_TYPES = frozenset({float, int})
_PASS_THROUGH = (frozenset({str}), frozenset({int}))
_LEAVES = frozenset({str, int, bool, type(None), orjson.Fragment})
"""Written as they are (a fragment: JSON rendered before, checked when it was); checked
inline, which spares a call per value."""


class _NotFinite(Exception):
    """Raised by the fast conversion; the slow walk then finds where the value sits."""


def _written_finite(value: float, decimals: int | None) -> bool:
    if decimals is None:
        return abs(value) < F32_OVERFLOW  # False for NaN too
    return math.isfinite(value)


def _float(value: float, decimals: int | None) -> Any:
    if not _written_finite(value, decimals):
        raise _NotFinite
    if decimals is not None:
        return round(value, decimals) + 0.0
    return np.float32(value + 0.0)  # + 0.0 turns -0.0 into 0.0


def _float_array(arr: np.ndarray[Any, Any], decimals: int | None) -> np.ndarray[Any, Any]:
    if decimals is not None:
        if not np.isfinite(arr).all():
            raise _NotFinite
        out = np.round(arr.astype(np.float64), decimals)
    else:
        narrow = arr.dtype.itemsize <= 4  # nothing to overflow; the limit itself would
        if not (np.isfinite(arr) if narrow else np.abs(arr) < F32_OVERFLOW).all():
            raise _NotFinite
        out = arr.astype(np.float32)
    return np.ascontiguousarray(out + out.dtype.type(0.0))


def _array(arr: np.ndarray[Any, Any], decimals: int | None) -> Any:
    if arr.dtype.kind == "f":
        return _float_array(arr, decimals)
    if arr.dtype.kind in "iu":
        return np.ascontiguousarray(arr)
    return _convert(arr.tolist(), decimals)


def _list(values: list[Any] | tuple[Any, ...], decimals: int | None) -> Any:
    """Lists of one scalar type go through numpy (floats) or pass as they are (str, int)."""
    kinds = frozenset(map(type, values))
    if kinds in _PASS_THROUGH or not values:
        return values
    if kinds <= _FLOAT_TYPES and values:
        return _float_array(np.array(values, dtype=np.float64), decimals)
    return [v if type(v) in _LEAVES else _convert(v, decimals) for v in values]


def _convert(obj: Any, decimals: int | None) -> Any:
    kind = type(obj)
    if kind is dict:
        return {k: v if type(v) in _LEAVES else _convert(v, decimals) for k, v in obj.items()}
    if kind is float:
        return _float(obj, decimals)
    if kind is list or kind is tuple:
        return _list(obj, decimals)
    if kind in _LEAVES:
        return obj
    if kind is np.ndarray:
        return _array(obj, decimals)
    if isinstance(obj, np.floating):
        return _float(float(obj), decimals)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Mapping):
        return {k: _convert(v, decimals) for k, v in obj.items()}
    return obj


def _non_finite_at(obj: Any, decimals: int | None, path: list[str | int]) -> Any:
    """(path, value) of the first value that would not be written finite, else None."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, float | np.floating):
        return None if _written_finite(float(obj), decimals) else (path, obj)
    items: Iterable[tuple[str | int, Any]]
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _non_finite_at(value, decimals, [*path, key])
        if found is not None:
            return found
    return None


def prepare(obj: Any, *, decimals: int | None = None, where: str = "document") -> Any:
    """Copy of ``obj`` ready for orjson: floats in their written precision, NaN/Inf rejected.

    Lists of numbers become numpy arrays, checked in one vectorised pass; only when a check
    fails is the document walked again to name where the value sits.
    """
    try:
        return _convert(obj, decimals)
    except _NotFinite:
        path, value = _non_finite_at(obj, decimals, [])
        raise not_finite(where, path, value) from None


def dumps(obj: Any, *, decimals: int | None = None, where: str = "document") -> bytes:
    """Canonical compact JSON bytes (no trailing newline)."""
    try:
        return orjson.dumps(prepare(obj, decimals=decimals, where=where), option=_OPTIONS)
    except orjson.JSONEncodeError as e:
        raise InvalidArgument(
            f"{where}: {e}",
            field=where,
            fix="token strings must be valid Unicode; decode bytes with the tokenizer",
        ) from e


def dumps_lines(
    rows: Iterable[Any], *, decimals: int | None = None, where: str = "document"
) -> bytes:
    """JSON Lines: one canonical object per line, each line ending in a newline."""
    out = bytearray()
    for i, row in enumerate(rows):
        out += dumps(row, decimals=decimals, where=f"{where} line {i + 1}")
        out += b"\n"
    return bytes(out)


def dumps_plain(obj: Any) -> bytes:
    """Canonical JSON of a document written as it is, unconverted: one already parsed (repairs)
    or one whose values were checked and put in their written form in bulk (float32 scalars,
    rendered fragments)."""
    return orjson.dumps(obj, option=_OPTIONS)


def read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the name ends in .gz."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    write_atomic_chunks(path, (data,))


PARTIAL_SUFFIX = ".partial"
"""Ends the name of a file ``write_atomic`` is still writing; one that outlives its writer was
left by a killed process."""


def write_atomic_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """``write_atomic`` of data that arrives in parts, none of which is held after it is
    written (a weight file grows with d_sae)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_partial_writes(folder: Path) -> list[Path]:
    """Deletes the files under ``folder`` that a killed process left half written (a resumed
    job must not validate or pack them); returns them."""
    left = [
        Path(at, name)
        for at, _, names in os.walk(folder)
        for name in names
        if name.startswith(".") and name.endswith(PARTIAL_SUFFIX)
    ]
    for path in left:
        path.unlink(missing_ok=True)
    return left


def write_document(path: Path, data: bytes) -> None:
    """Write serialised JSON, gzipped when the file name ends in .gz."""
    write_atomic(path, deflate.gzip_bytes(data) if path.name.endswith(".gz") else data)


def write_fresh(path: Path, data: bytes) -> None:
    """Write ``data`` into an existing folder that is cleared before its files are written and
    counted written only once all are: a crash leaves nothing anyone reads, so no temporary
    file and rename (half the CPU of writing thousands of small files)."""
    with open(path, "wb") as f:
        f.write(data)


def content_hash(obj: Any, *, decimals: int | None = None) -> str:
    """SHA-256 (hex) of the canonical serialisation: equal written content, equal hash."""
    return hashlib.sha256(dumps(obj, decimals=decimals)).hexdigest()


def stable_id(*parts: str | int, length: int = 25) -> str:
    """Cuid-shaped id ('c' + lowercase base32) derived from ``parts``; stable across runs."""
    return stable_ids(["\x1f".join(str(p) for p in parts)], length)[0]


def stable_ids(keys: Sequence[str], length: int = 25) -> list[str]:
    """``stable_id`` of each key (its parts joined by the unit separator), base32-encoded in
    one numpy pass (the base64 module's is Python, a loop per 5 bytes): a digest's 5-byte
    groups encode to 8 characters each, whatever surrounds them."""
    whole_groups = -(-(length - 1) // 8) * 5
    digests = b"".join([hashlib.sha256(k).digest()[:whole_groups] for k in map(str.encode, keys)])
    groups = np.frombuffer(digests, np.uint8).reshape(-1, 5).astype(np.uint64)
    packed = groups @ (np.uint64(1) << np.arange(32, -1, -8, dtype=np.uint64))  # 40 bits each
    letters = (packed[:, None] >> np.arange(35, -1, -5, dtype=np.uint64)) & np.uint64(31)
    text = _BASE32[letters.reshape(-1)].tobytes().decode("ascii")
    width = whole_groups * 8 // 5
    return ["c" + text[at : at + length - 1] for at in range(0, len(text), width)]


_BASE32 = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz234567", np.uint8)
"""RFC 4648's base32 alphabet, in lowercase."""
