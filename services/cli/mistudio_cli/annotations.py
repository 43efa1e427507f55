"""`run --labels FILE` and `run --explanations FILE`: read and checked before anything is stored.

``--labels`` is CSV with a header (``feature_index,label[,category]``) or JSON (a list of
``{"feature_index", "label", "category"}``). ``--explanations`` is a JSON list of
``{"feature_index", "description", "method", "explainer_model", "score", "created_at"}``; a row
may also carry ``label`` and ``category``, which set the feature's label like ``--labels``.
A bad row fails the whole command before the SAE or any row is written, naming the file, the
row and the field.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.errors import InvalidArgument

LABEL_MASK = ("label", "category")
"""The Feature fields a labels file writes; the feature's statistics are left as they are."""
_EXPLANATION_KEYS = frozenset(
    {"feature_index", "description", "method", "explainer_model", "score", "created_at"}
)
_LABEL_KEYS = frozenset({"feature_index", "label", "category"})


@dataclass
class Annotations:
    """Labels and explanations to store for one SAE."""

    labels: dict[int, spb.Feature] = field(default_factory=dict)
    explanations: list[tuple[str, spb.Explanation]] = field(default_factory=list)
    """(where it was read, the explanation)."""
    label_rows: dict[int, str] = field(default_factory=dict)
    """Feature index -> where its label was read, for errors."""

    def check(self, d_sae: int) -> None:
        """Every feature index lies in [0, d_sae)."""
        located = [(w, e.feature_index) for w, e in self.explanations]
        located += [(self.label_rows[i], i) for i in self.labels]
        for where, index in located:
            if not 0 <= index < d_sae:
                raise InvalidArgument(
                    f"{where}: feature_index {index} is outside 0..{d_sae - 1}",
                    field=where,
                    fix=f"the SAE has {d_sae} features; correct or remove the row",
                )


def read_annotations(labels_file: str, explanations_file: str) -> Annotations:
    out = Annotations()
    if explanations_file:
        _read_explanations(Path(explanations_file), out)
    if labels_file:
        path = Path(labels_file)
        text = _read(path, "--labels")
        rows = _json_rows(path, text, "--labels") if _is_json(path, text) else _csv_rows(path, text)
        for where, row in rows:
            _add_label(out, where, row, "--labels")
    return out


def _read_explanations(path: Path, out: Annotations) -> None:
    for where, row in _json_rows(path, _read(path, "--explanations"), "--explanations"):
        unknown = sorted(set(row) - _EXPLANATION_KEYS - _LABEL_KEYS)
        if unknown:
            raise _bad(where, f"unknown keys {unknown}", "--explanations")
        if set(row) & {"label", "category"}:
            _add_label(out, where, row, "--explanations")
        fields = {k: v for k, v in row.items() if k in _EXPLANATION_KEYS}
        if set(fields) - {"feature_index"}:
            try:
                out.explanations.append((where, json_format.ParseDict(fields, spb.Explanation())))
            except json_format.ParseError as error:
                raise _bad(where, str(error), "--explanations") from None


def _add_label(out: Annotations, where: str, row: dict[str, Any], option: str) -> None:
    allowed = _LABEL_KEYS | (_EXPLANATION_KEYS if option == "--explanations" else set())
    unknown = sorted(set(row) - allowed)
    if unknown or "feature_index" not in row:
        raise _bad(where, f"needs feature_index and label (unknown keys: {unknown})", option)
    try:
        index = int(row["feature_index"])
    except (TypeError, ValueError):
        value = row["feature_index"]
        raise _bad(where, f"feature_index {value!r} is not a number", option) from None
    label, category = str(row.get("label") or ""), str(row.get("category") or "")
    out.labels[index] = spb.Feature(feature_index=index, label=label, category=category)
    out.label_rows[index] = where


def _read(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgument(
            f"cannot read {path}: {error}", field=option, fix="give a readable UTF-8 file"
        ) from None


def _is_json(path: Path, text: str) -> bool:
    return path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{")


def _json_rows(path: Path, text: str, option: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        rows = json.loads(text)
    except ValueError as error:
        raise InvalidArgument(
            f"{path} is not JSON: {error}", field=option, fix="give a JSON list of objects"
        ) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InvalidArgument(
            f"{path} is not a JSON list of objects", field=option, fix="wrap the rows in [...]"
        )
    return [(f"{path.name}[{i}]", r) for i, r in enumerate(rows)]


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"feature_index", "label"} <= set(reader.fieldnames):
        raise InvalidArgument(
            f"{path} has no header with feature_index and label",
            field="--labels",
            fix="start the CSV with the line: feature_index,label,category",
        )
    return [(f"{path.name} line {n + 2}", dict(r)) for n, r in enumerate(reader)]


def _bad(where: str, problem: str, option: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {problem}", field=option, fix="correct the row and run again")
