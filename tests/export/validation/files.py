"""Write a clean export, then break it the way real files break: raw JSON, raw gzip, raw bytes."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.neuronpedia_importer import write_importer_export
from mistudio_export.formats.prd_json import write_prd_export
from mistudio_export.formats.saedashboard_batch import write_saedashboard_batches
from mistudio_export.formats.upload_payloads import write_upload_payloads

from tests.export.formats.builders import dashboard, explanation, naming, sae_info

SOURCE = Path("gpt2-small/6-mistudio-res-16k")


def prd_export(root: Path, *, compress: bool = False) -> Path:
    dashboards = [dashboard(0), dashboard(1)]
    write_prd_export(
        root,
        sae_info(),
        naming(),
        column_batches(dashboards),
        [explanation(0)],
        compress_features=compress,
    )
    return root


def importer_export(root: Path) -> Path:
    dashboards = [dashboard(0), dashboard(1)]
    write_importer_export(root, sae_info(), naming(), column_batches(dashboards), [explanation(0)])
    return root / SOURCE


def saedashboard_export(root: Path) -> Path:
    write_saedashboard_batches(
        root, sae_info(), naming(), column_batches([dashboard(0), dashboard(1)])
    )
    return root


def upload_export(root: Path) -> Path:
    write_upload_payloads(
        root, naming(), column_batches([dashboard(0), dashboard(1)]), [explanation(0)]
    )
    return root


def _raw(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def _store(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def read_json(path: Path) -> Any:
    return json.loads(_raw(path))


def edit_json(path: Path, mutate: Callable[[Any], object]) -> None:
    """Rewrite with the stdlib encoder, which writes NaN/Infinity literals and \\ud800 escapes."""
    doc = read_json(path)
    mutate(doc)
    _store(path, json.dumps(doc).encode())


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _raw(path).decode().splitlines() if line]


def edit_rows(path: Path, mutate: Callable[[list[dict[str, Any]]], object]) -> None:
    rows = read_rows(path)
    mutate(rows)
    _store(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def replace_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = _raw(path)
    assert old in data
    _store(path, data.replace(old, new, 1))
