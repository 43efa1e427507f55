"""Deterministic JSON, JSON Lines and gzip: equal input, byte-identical files.

Keys are sorted. Floats are written as the shortest decimal that round-trips their float32 value
(the precision the dashboards are computed in), or rounded to a fixed number of decimals where a
format asks for it. NaN and Inf are never written: serialising one raises NonFiniteValue naming
where it sits, and the validator reports and repairs files that other tools wrote with them.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from mistudio_common.errors import InvalidArgument

_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
GZIP_LEVEL = 6


class NonFiniteValue(InvalidArgument):
    """A NaN or Inf reached a writer; ``field`` holds its JSON pointer."""


def pointer(parts: Iterable[str | int]) -> str:
    """RFC 6901 JSON pointer for a path of keys and indices."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _fail(where: str, path: list[str | int], value: object) -> NonFiniteValue:
    ptr = pointer(path)
    return NonFiniteValue(
        f"{where}: {value} at {ptr or '/'}",
        field=ptr,
        fix="recompute the value (a dead feature has 0, not NaN); exports never carry NaN or Inf",
    )


def _scalar_list(values: list[Any], decimals: int | None) -> Any:
    """A list of scalars in one numpy pass: floats converted, ints and strings passed through.

    Returns None for lists numpy cannot type uniformly (mixed or nested), which are walked.
    """
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError):
        return None
    if arr.ndim != 1:
        return None
    if arr.dtype.kind in "iuU":
        return values
    if arr.dtype.kind != "f":
        return None
    if decimals is not None:
        arr = np.round(arr.astype(np.float64), decimals)
    else:
        with np.errstate(over="ignore"):
            arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr + arr.dtype.type(0.0))  # +0.0 turns -0.0 into 0.0


def _scalar(value: float, decimals: int | None) -> Any:
    if decimals is not None:
        return round(value, decimals) + 0.0
    with np.errstate(over="ignore"):  # float32 overflow gives inf, which the caller rejects
        return np.float32(value) + np.float32(0.0)


def prepare(obj: Any, *, decimals: int | None = None, where: str = "document") -> Any:
    """Copy of ``obj`` ready for orjson: floats in their written precision, NaN/Inf rejected."""
    return _prepare(obj, decimals, where, [])


def _prepare(obj: Any, decimals: int | None, where: str, path: list[str | int]) -> Any:
    if isinstance(obj, float | np.floating):
        written = _scalar(float(obj), decimals)
        if not math.isfinite(written):
            raise _fail(where, path, obj)
        return written
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, Mapping):
        return {k: _prepare(v, decimals, where, [*path, k]) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        if (
            obj
            and isinstance(obj[0], int | float | str | np.number)
            and not isinstance(obj[0], bool)
        ):
            done = _scalar_list(list(obj), decimals)
            if isinstance(done, np.ndarray):
                bad = np.flatnonzero(~np.isfinite(done))
                if bad.size:
                    raise _fail(where, [*path, int(bad[0])], done[bad[0]])
                return done
            if done is not None:
                return done
        return [_prepare(v, decimals, where, [*path, i]) for i, v in enumerate(obj)]
    return obj


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
    """Canonical JSON of an already-parsed document, floats as they are (used by repairs)."""
    return orjson.dumps(obj, option=_OPTIONS)


def gzip_bytes(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """gzip with mtime 0 and no file name, so equal data gives equal bytes."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the name ends in .gz."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_document(path: Path, data: bytes, *, gzip_level: int = GZIP_LEVEL) -> None:
    """Write serialised JSON, gzipped when the file name ends in .gz."""
    write_atomic(path, gzip_bytes(data, gzip_level) if path.name.endswith(".gz") else data)


def content_hash(obj: Any, *, decimals: int | None = None) -> str:
    """SHA-256 (hex) of the canonical serialisation: equal written content, equal hash."""
    return hashlib.sha256(dumps(obj, decimals=decimals)).hexdigest()


def stable_id(*parts: str | int, length: int = 25) -> str:
    """Cuid-shaped id ('c' + lowercase base32) derived from ``parts``; stable across runs."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return ("c" + base64.b32encode(digest).decode().lower().rstrip("="))[:length]
