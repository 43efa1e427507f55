"""The staged dashboards: ``staging/work/dashboards/chunk-N.bin`` (length-prefixed
``FeatureDashboard`` messages, in index order) with their content hashes beside them in
``chunk-N.hashes.json``; a chunk counts as staged once both exist. Kept apart from the reading
(``collect``) so the processes writing the formats import only this.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from mistudio_export.formats import jsonio

_LENGTH = struct.Struct(">I")


class StagedChunk(NamedTuple):
    """A chunk once staged, and the content hashes of the features it holds."""

    path: Path
    hashes: Mapping[int, str]


def dashboards_dir(staging: Path) -> Path:
    return staging / "work" / "dashboards"


def chunk_path(staging: Path, n: int) -> Path:
    return dashboards_dir(staging) / f"chunk-{n:06d}.bin"


def hashes_path(chunk: Path) -> Path:
    return chunk.with_suffix(".hashes.json")


def hashes_to_json(hashes: Mapping[int, str]) -> dict[str, str]:
    return {str(index): value for index, value in sorted(hashes.items())}


def hashes_from_json(data: Any) -> dict[int, str]:
    if not isinstance(data, Mapping):
        return {}
    return {int(index): str(value) for index, value in data.items()}


def read_hashes(chunk: Path) -> dict[int, str]:
    return hashes_from_json(orjson.loads(hashes_path(chunk).read_bytes()))


def write_chunk(path: Path, wires: list[bytes], hashes: dict[int, str]) -> None:
    """Writes dashboards in their deterministic wire form (``dashboard_bytes``, as hashed), the
    hashes first: a chunk counts as staged once both files exist."""
    jsonio.write_atomic(hashes_path(path), jsonio.dumps_plain(hashes_to_json(hashes)))
    jsonio.write_atomic(path, b"".join(_LENGTH.pack(len(w)) + w for w in wires))


def staged_chunks(staging: Path) -> list[StagedChunk]:
    """The staged chunks, in index order."""
    paths = sorted(dashboards_dir(staging).glob("chunk-*.bin"))
    return [StagedChunk(p, read_hashes(p)) for p in paths]


def read_wires(chunks: Iterable[Path]) -> Iterator[bytes]:
    """Every dashboard of ``chunks``, in order, serialised."""
    for path in chunks:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            yield data[offset : offset + length]
            offset += length
