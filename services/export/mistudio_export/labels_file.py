"""The one reader of feature-label files (CSV or JSON), for `labels` and `run --labels`.

CSV has a header naming ``feature_index`` and ``label`` (and optionally ``category``); JSON is a
list of ``{"feature_index", "label", "category"}`` objects. Only the columns the file has are
written to the store, so a file of labels alone keeps the categories already stored.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.errors import InvalidArgument

COLUMNS = ("label", "category")
"""Feature fields a labels file may set (names of spb.Feature fields and of the update mask)."""


@dataclass(frozen=True)
class LabelsFile:
    features: list[spb.Feature]
    update_mask: list[str]
    """The columns present, for UpsertFeatures: other stored fields stay as they are."""


def read_labels_file(path: Path, *, flag: str) -> LabelsFile:
    """Reads ``path``; errors name ``flag`` (the option or argument that gave the path)."""

    def bad(problem: str) -> InvalidArgument:
        return InvalidArgument(
            f"{path}: {problem}",
            field=flag,
            fix="give a CSV with a header feature_index,label[,category] or a JSON list of "
            '{"feature_index": 3, "label": "…", "category": "…"} objects',
        )

    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise bad(f"cannot be read ({error.strerror or error})") from None
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except ValueError as error:
            raise bad(f"is not valid JSON ({error})") from None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise bad("is not a JSON list of objects")
    else:
        rows = list(csv.DictReader(text.splitlines()))
    columns = [c for c in COLUMNS if any(c in row for row in rows)]
    if not rows or not columns:
        raise bad("holds no rows with a label or category")
    features = [_feature(row, number, columns, bad) for number, row in enumerate(rows, start=1)]
    indices = [f.feature_index for f in features]
    if len(set(indices)) != len(indices):
        duplicate = next(i for i in indices if indices.count(i) > 1)
        raise bad(f"names feature {duplicate} more than once")
    return LabelsFile(features=features, update_mask=columns)


def _feature(row: dict[str, Any], number: int, columns: list[str], bad: Any) -> spb.Feature:
    raw = row.get("feature_index")
    try:
        index = int(str(raw).strip())
    except ValueError:
        raise bad(f"row {number}: feature_index {raw!r} is not a whole number") from None
    if index < 0:
        raise bad(f"row {number}: feature_index {index} is negative")
    feature = spb.Feature(feature_index=index)
    for column in columns:
        setattr(feature, column, str(row.get(column) or "").strip())
    return feature
