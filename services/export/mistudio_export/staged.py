"""The staged dashboards: ``staging/work/dashboards/chunk-N.bin`` (length-prefixed
``FeatureDashboard`` messages, in index order) with their content hashes beside them in
``chunk-N.hashes.json``; a chunk counts as staged once both exist. Kept apart from the reading
(``collect``) so the processes writing the formats import only this.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from mistudio.common.v1 import dashboard_pb2 as dpb

from mistudio_export.formats import jsonio

_LENGTH = struct.Struct(">I")


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


def write_chunk(path: Path, dashboards: list[dpb.FeatureDashboard], hashes: dict[int, str]) -> None:
    """The hashes first: a chunk counts as staged once both files exist."""
    jsonio.write_atomic(hashes_path(path), jsonio.dumps_plain(hashes_to_json(hashes)))
    data = bytearray()
    for dashboard in dashboards:
        raw = dashboard.SerializeToString(deterministic=True)
        data += _LENGTH.pack(len(raw)) + raw
    jsonio.write_atomic(path, bytes(data))


def staged_chunks(staging: Path) -> list[Path]:
    """The staged chunk files, in index order."""
    return sorted(dashboards_dir(staging).glob("chunk-*.bin"))


def chunk_indices(chunk: Path) -> list[int]:
    """The features a staged chunk holds, ascending (read from its hashes, not its dashboards)."""
    return sorted(read_hashes(chunk))


def read_views(chunks: Iterable[Path]) -> Iterator[dpb.FeatureDashboardView]:
    """Every dashboard of ``chunks``, in order, as its read view (``write_chunk``'s protobuf
    serialisation packs each repeated number field into one record, as the view needs)."""
    for path in chunks:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            yield dpb.FeatureDashboardView.FromString(data[offset : offset + length])
            offset += length


def head(view: dpb.FeatureDashboardView) -> dpb.FeatureDashboard:
    """The dashboard ``view`` reads, its example lists left empty (the columns hold them)."""
    copy = dpb.FeatureDashboardView()
    copy.CopyFrom(view)  # in C, as are the clearing and the round trip: no example converted
    copy.ClearField("top_examples")
    for group in copy.quantile_groups:
        group.ClearField("examples")
    return dpb.FeatureDashboard.FromString(copy.SerializeToString())
