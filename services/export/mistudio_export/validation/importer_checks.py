"""Checks of Neuronpedia's importer layout: {modelId}/{sourceId}/ with metadata and row files.

Besides each row's schema, the importer's own mechanics are checked: the column list comes from
a file's first line (same keys on every line, NOT NULL columns filled), unknown keys vanish,
rows need their Neuron (foreign keys), and model/sourceset/source rows go through Prisma, which
rejects unknown fields.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from mistudio_export.formats.neuronpedia_explanations import (
    KNOWN_EXPLAINER_MODELS,
    KNOWN_EXPLANATION_TYPES,
    PENDING_EXPLANATIONS,
)
from mistudio_export.formats.neuronpedia_importer import NOT_NULL
from mistudio_export.formats.schemas import load_schema
from mistudio_export.records import PUBLIC_ACTIVATION_USER_IDS, parse_source_id
from mistudio_export.validation.checks import (
    check_edges,
    check_example,
    close,
    numbers,
    qualifying_outside_bin,
    same_length,
)
from mistudio_export.validation.context import (
    FileContext,
    Repair,
    Session,
    load_rows,
    read_file,
    rows_of,
    save_rows,
    vouch,
)
from mistudio_export.validation.naming_checks import check_names
from mistudio_export.validation.outline import ActivationRow, outline_lines
from mistudio_export.validation.report import Severity
from mistudio_export.validation.scan import scan
from mistudio_export.validation.schema_check import check_schema
from mistudio_export.validation.seen import FirstSeen, Maxima

METADATA_FILES = {
    "model.jsonl": "np_model",
    "sourceset.jsonl": "np_source_set",
    "source.jsonl": "np_source",
    "release.jsonl": "np_release",
}
REQUIRED_METADATA = ("model.jsonl", "sourceset.jsonl", "source.jsonl")
STREAMS = {
    "features": "Neuron",
    "activations": "Activation",
    "explanations": "Explanation",
    PENDING_EXPLANATIONS: "Explanation",
}
_SCHEMAS = {"Neuron": "np_neuron", "Activation": "np_activation", "Explanation": "np_explanation"}
BATCH_FILE = re.compile(r"^batch-(\d+)\.jsonl\.gz$")
S3_LIST_LIMIT = 1000
_SCALAR_DEFAULTS = {"hasVector": False, "vectorDefaultSteerStrength": 10, "scoreV1": 0.0}


def is_importer_dir(directory: Path) -> bool:
    return any((directory / name).is_file() for name in METADATA_FILES) or any(
        any((directory / stream).glob("*.jsonl*")) for stream in STREAMS
    )


class RowIds:
    """The activation row ids seen so far, kept as sorted 64-bit hashes: 8 bytes an id where a
    set of the strings took about 100 (a 131,072-feature export has 5.9 million rows). A file's
    ids are checked together when it ends (``check_file``). Two different ids share a hash with
    a chance of about n^2 / 2^65 (1e-6 at 6 million rows): reported as used twice."""

    def __init__(self) -> None:
        self._seen = np.empty(0, dtype=np.int64)
        self._ids: list[str] = []
        self._lines: list[int] = []

    def add(self, row_id: str, line: int) -> None:
        self._ids.append(row_id)
        self._lines.append(line)

    def extend(self, row_ids: list[str], first_line: int) -> None:
        """Adds the ids of consecutive lines from ``first_line`` on."""
        self._ids += row_ids
        self._lines += range(first_line, first_line + len(row_ids))

    def check_file(self, ctx: FileContext) -> None:
        """Reports every id of the file just read that an earlier row already used."""
        hashes = np.fromiter(map(hash, self._ids), dtype=np.int64, count=len(self._ids))  # [rows]
        order = np.argsort(hashes, kind="stable")
        ranked = hashes[order]
        again = np.zeros(len(hashes), dtype=bool)
        again[order[1:][ranked[1:] == ranked[:-1]]] = True  # used by an earlier row of the file
        if len(self._seen):  # or of an earlier file
            at = np.minimum(np.searchsorted(self._seen, hashes), len(self._seen) - 1)
            again |= self._seen[at] == hashes
        for i in np.flatnonzero(again).tolist():
            row_id, ctx.line = self._ids[i], self._lines[i]
            ctx.report("DUPLICATE_ID", "/id", f"id {row_id!r} already used")
        ctx.line = None
        new = np.sort(hashes[~again])  # not yet seen, each once
        self._seen = np.insert(self._seen, np.searchsorted(self._seen, new), new)  # one copy
        self._ids, self._lines = [], []


@dataclass
class _Source:
    model_id: str
    source_id: str
    neuron_indices: FirstSeen = field(default_factory=FirstSeen)
    activation_max: Maxima = field(default_factory=Maxima)
    referenced: FirstSeen = field(default_factory=FirstSeen)
    """Index -> first (file, line) of an activation or explanation row that names it."""
    ids: RowIds = field(default_factory=RowIds)

    def end_file(self) -> None:
        self.neuron_indices.end_file()
        self.activation_max.end_file()
        self.referenced.end_file()


def _key(index: str) -> Hashable:
    """The index as the key the columns keep: an integer when the text is exactly its digits
    (Neuronpedia's index is text, so "07" and "7" are two features)."""
    if len(index) <= 18 and index.isascii():
        try:
            number = int(index)
        except ValueError:
            return index
        if str(number) == index:
            return number
    return index


def validate_importer(session: Session, directory: Path) -> None:
    src = _Source(model_id=directory.parent.name, source_id=directory.name)
    folder = session.context(directory, reading=False)
    check_names(
        folder, src.model_id, src.source_id, model_where="{modelId}", source_where="{sourceId}"
    )
    for name, schema in METADATA_FILES.items():
        _metadata_file(session, directory / name, schema, src)
    for stream in ("activations", "explanations", PENDING_EXPLANATIONS, "features"):
        for path in _stream_files(session, directory / stream):
            _rows_file(session, path, STREAMS[stream], src)
    orphans = (
        (str(key), file, line)
        for key, file, line in src.referenced.missing_from(src.neuron_indices)
    )
    for index, file, line in sorted(orphans):
        ctx = FileContext(session, file, line=line)
        ctx.report("ORPHAN_ROW", "/index", f"feature {index} has no row in features/")


def _stream_files(session: Session, directory: Path) -> list[Path]:
    paths = sorted(directory.glob("*")) if directory.is_dir() else []
    if len(paths) > S3_LIST_LIMIT:
        session.context(directory, reading=False).report(
            "INCONSISTENT",
            "",
            f"{len(paths)} files; the importer lists only the first {S3_LIST_LIMIT}",
            severity=Severity.ERROR,
        )
    kept: dict[int, Path] = {}
    for path in paths:
        m = BATCH_FILE.match(path.name)
        if m is None:
            session.context(path, reading=False).report(
                "UNEXPECTED_FILE", "", "the importer reads batch-N.jsonl.gz files"
            )
        else:
            kept[int(m.group(1))] = path
    return [kept[n] for n in sorted(kept)]


def _metadata_file(session: Session, path: Path, schema: str, src: _Source) -> None:
    if not path.is_file():
        if path.name in REQUIRED_METADATA:
            session.context(path, reading=False).report(
                "MISSING_FILE", "", f"{path.name} is needed to create the {schema[3:]} row"
            )
        return
    ctx, rows = load_rows(session, path)
    columns = set(load_schema(schema)["properties"])
    for n, row in rows:
        ctx.line = n
        scan(ctx, row)
        check_schema(ctx, row, schema)
        if isinstance(row, dict):
            for key in sorted(set(row) - columns):
                ctx.report(
                    "UNKNOWN_COLUMN",
                    f"/{key}",
                    f"{key!r} is not a field; Prisma's create rejects the row",
                    severity=Severity.ERROR,
                )
            _metadata_identity(ctx, path.name, row, src)
    ctx.line = None
    if len(rows) > 1:
        ctx.report("INCONSISTENT", "", f"{len(rows)} rows; one is expected")
    save_rows(ctx, path, rows)


def _metadata_identity(ctx: FileContext, name: str, row: dict[str, Any], src: _Source) -> None:
    parsed = parse_source_id(src.source_id)
    expected: dict[str, str | None] = {}
    if name == "model.jsonl":
        expected = {"id": src.model_id}
    elif name == "sourceset.jsonl":
        expected = {"modelId": src.model_id, "name": parsed[1] if parsed else None}
    elif name == "source.jsonl":
        expected = {
            "id": src.source_id,
            "modelId": src.model_id,
            "setName": parsed[1] if parsed else None,
        }
    for key, want in expected.items():
        if want is not None and key in row and row[key] != want:
            ctx.report(
                "IDENTITY_MISMATCH", f"/{key}", f"{key}={row[key]!r}, the folder says {want!r}"
            )


class _RowChecker:
    """Checks shared by every line of one row file, remembering what it reported once."""

    def __init__(self, ctx: FileContext, table: str, src: _Source) -> None:
        self.ctx, self.table, self.src = ctx, table, src
        self.columns = set(load_schema(_SCHEMAS[table])["properties"]) | {"zIndices"}
        self.first: dict[str, Any] | None = None
        self.once: set[tuple[str, str]] = set()
        self.not_null = itemgetter(*NOT_NULL[table])
        """The NOT NULL values of a row that has every NOT NULL key (a tuple: one C call a row
        where a ``get`` per column took a third of the importer check's CPU)."""
        self.first_has_not_null = False
        self.last_index: str | None = None
        """The index of the row before, already among ``src.referenced`` when it was one an
        activation or explanation row named: activation rows come by feature."""

    def refer(self, index: str, line: int) -> None:
        """Remembers that the row at ``line`` names feature ``index`` (the first place counts:
        a repeat of the row before's index is already there)."""
        if index != self.last_index:
            self.src.referenced.add(_key(index), self.ctx.file, line)
            self.last_index = index

    def report_once(self, code: str, pointer: str, message: str, key: str) -> None:
        if (code, key) not in self.once:
            self.once.add((code, key))
            self.ctx.report(code, pointer, message + " (reported once per file)")

    def check(self, row: Any) -> str | None:
        """Common checks; returns the row's index as text when it is usable."""
        scan(self.ctx, row)
        if not isinstance(row, dict):
            check_schema(self.ctx, row, _SCHEMAS[self.table])
            return None
        if self.first is None:
            self.first = row
            self.first_has_not_null = all(key in row for key in NOT_NULL[self.table])
        # most rows have the first row's keys: nothing to compare, no unknown key not yet reported
        like_first = row is not self.first and row.keys() == self.first.keys()
        if not (like_first and self.first_has_not_null) or None in self.not_null(row):
            self._not_null(row)
        if not like_first:
            self._key_set(row)
        if not self.ctx.values_checked:
            check_schema(self.ctx, row, _SCHEMAS[self.table])
        for key in [] if like_first else sorted(set(row) - self.columns):
            self.report_once(
                "UNKNOWN_COLUMN", f"/{key}", f"{key!r} is not a {self.table} column", key
            )
        for key, want in (("modelId", self.src.model_id), ("layer", self.src.source_id)):
            if key in row and row[key] != want:
                self.report_once(
                    "IDENTITY_MISMATCH",
                    f"/{key}",
                    f"{key}={row[key]!r} in folder {self.src.model_id}/{self.src.source_id}",
                    f"{key}={row[key]}",
                )
        index = row.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return str(index)
        if isinstance(index, str) and index.isdigit():
            return index
        if self.ctx.values_checked:  # the column checks vouch for values, not for the index
            check_schema(self.ctx, row, _SCHEMAS[self.table])
        return None

    def _not_null(self, row: dict[str, Any]) -> None:
        for key in NOT_NULL[self.table]:
            if row.get(key) is None:
                value = _computed(self.table, row, key)
                self.ctx.report(
                    "NOT_NULL_MISSING",
                    f"/{key}",
                    f"NOT NULL column {key} is missing or null",
                    repair=None if value is _NO_DEFAULT else _setter(row, key, value, "computed"),
                )

    def _key_set(self, row: dict[str, Any]) -> None:
        assert self.first is not None
        for key in sorted(set(self.first) - set(row)):
            if self.ctx.already_reported(f"/{key}"):
                continue
            default = self._default(key)
            fixable = key not in NOT_NULL[self.table] and default is not _NO_DEFAULT
            self.ctx.report(
                "KEY_SET_MISMATCH",
                f"/{key}",
                f"{key!r} is on line 1 but missing here; the importer would insert NULL",
                repair=_setter(row, key, default, "added") if fixable else None,
            )
        for key in sorted(set(row) - set(self.first)):
            self.ctx.report(
                "KEY_SET_MISMATCH",
                f"/{key}",
                f"{key!r} is not on line 1, so the importer drops it",
                severity=Severity.WARNING,
            )

    def _default(self, key: str) -> Any:
        if key in _SCALAR_DEFAULTS:
            return _SCALAR_DEFAULTS[key]
        if key == "createdAt" and self.first is not None:
            return self.first.get("createdAt")
        spec = load_schema(_SCHEMAS[self.table])["properties"].get(key, {})
        types = spec.get("type", [])
        types = types if isinstance(types, list) else [types]
        if "array" in types:
            return []
        return None if "null" in types else _NO_DEFAULT


_NO_DEFAULT = object()


def _setter(row: dict[str, Any], key: str, value: Any, verb: str) -> Repair:
    def repair() -> str:
        row[key] = value
        return f"{verb} {key}={value!r}"

    return repair


def _computed(table: str, row: dict[str, Any], key: str) -> Any:
    """Value of a NOT NULL Activation column derivable from ``values``, else _NO_DEFAULT."""
    values = numbers(row.get("values"))
    if table != "Activation" or not values:
        return _NO_DEFAULT
    if key == "maxValue":
        return max(values)
    if key == "minValue":
        return min(values)
    if key == "maxValueTokenIndex":
        return values.index(max(values))
    return _NO_DEFAULT


def _rows_file(session: Session, path: Path, table: str, src: _Source) -> None:
    ctx, data = read_file(session, path)
    checker = _RowChecker(ctx, table, src)
    plain = None if data is None or table != "Activation" else _plain_activations(checker, data)
    rows: list[tuple[int, Any]] = []
    if plain is not None:  # checked as outlined: what the checks across rows and files need
        for n, index in plain.features:
            checker.refer(index, n)
        src.ids.extend(plain.ids, 1)
    elif data is not None:
        rows = rows_of(ctx, data)
        _check_rows(checker, rows, path)
    src.ids.check_file(ctx)
    src.end_file()
    save_rows(ctx, path, rows)


def _check_rows(checker: _RowChecker, rows: list[tuple[int, Any]], path: Path) -> None:
    ctx, table, src = checker.ctx, checker.table, checker.src
    for n, row in rows:
        ctx.line = n
        index = checker.check(row)
        if index is None or not isinstance(row, dict):
            continue
        if table == "Neuron":
            _neuron(ctx, row, index, src)
        elif table == "Activation":
            _activation(ctx, checker, row, index, src)
        else:
            checker.refer(index, n)
            if path.parent.name == "explanations":
                _explanation_keys(checker, row)
    ctx.line = None


_ACTIVATION_DECODER = msgspec.json.Decoder(ActivationRow)
_INDEX, _ID, _CREATOR = attrgetter("index"), attrgetter("id"), attrgetter("creatorId")
_MODEL, _LAYER = attrgetter("modelId"), attrgetter("layer")


@dataclass(frozen=True, slots=True)
class _PlainActivations:
    """What the checks across rows and files need of a plain Activation file."""

    features: list[tuple[int, str]]
    """(line, index) where each run of rows of one feature starts."""
    ids: list[str]
    """The row ids, line by line from line 1."""


def _plain_activations(checker: _RowChecker, data: bytes) -> _PlainActivations | None:
    """The facts of an Activation file whose rows are all plainly what the writer makes from
    checked columns (``vouch``): rows that ``ActivationRow`` outlines (the writer's columns, no
    NOT NULL value null), one a line, with a digit-string index, this folder's modelId and
    layer, a public creatorId. In such rows ``_RowChecker.check`` and ``_activation`` find
    nothing, and only record what the checks across rows and files need (``refer``, ``ids``),
    which the caller does from these. None for any other file, whose rows then get every
    check. Each chunk's rows are read by C loops (``map``) and freed before the next."""
    src = checker.src
    if not vouch(checker.ctx, data):
        return None
    plain = _PlainActivations([], [])
    line = 1
    for rows in outline_lines(data, _ACTIVATION_DECODER):
        if rows is None:
            return None
        indices = list(map(_INDEX, rows))
        if (
            not all(map(str.isdigit, indices))
            or not set(map(_CREATOR, rows)) <= PUBLIC_ACTIVATION_USER_IDS
            or set(map(_MODEL, rows)) != {src.model_id}
            or set(map(_LAYER, rows)) != {src.source_id}
        ):
            return None
        # rows come by feature: one step a feature, the rows of each skipped in C
        for index, run in groupby(enumerate(indices, start=line), key=itemgetter(1)):
            plain.features.append((next(run)[0], index))
        plain.ids.extend(map(_ID, rows))
        line += len(rows)
    return plain


def _explanation_keys(checker: _RowChecker, row: dict[str, Any]) -> None:
    """Foreign keys into Neuronpedia's config: one unknown name fails the whole file."""
    type_name, model = row.get("typeName"), row.get("explanationModelName")
    if isinstance(type_name, str) and type_name not in KNOWN_EXPLANATION_TYPES:
        checker.report_once(
            "UNKNOWN_EXPLANATION_TYPE",
            "/typeName",
            f"typeName {type_name!r} must exist in Neuronpedia's ExplanationType table",
            type_name,
        )
    if model == "":
        checker.ctx.report(
            "EMPTY_MODEL_NAME",
            "/explanationModelName",
            "explanationModelName is '': no model is NULL, an empty name breaks the foreign key",
            repair=_setter(row, "explanationModelName", None, "set"),
        )
    elif isinstance(model, str) and model not in KNOWN_EXPLAINER_MODELS:
        checker.report_once(
            "UNKNOWN_EXPLANATION_TYPE",
            "/explanationModelName",
            f"explanationModelName {model!r} must exist in Neuronpedia's ExplanationModelType",
            model,
        )


def _activation(
    ctx: FileContext, checker: _RowChecker, row: dict[str, Any], index: str, src: _Source
) -> None:
    checker.refer(index, ctx.line or 0)
    if not ctx.values_checked:  # else the columns the row was written from were checked
        top = check_example(
            ctx, row, [], max_key="maxValue", index_key="maxValueTokenIndex", min_key="minValue"
        )
        if top is not None:
            src.activation_max.update(_key(index), top)
    row_id = row.get("id")
    if isinstance(row_id, str):
        src.ids.add(row_id, ctx.line or 0)
    creator = row.get("creatorId")
    if isinstance(creator, str) and creator not in PUBLIC_ACTIVATION_USER_IDS:
        checker.report_once(
            "HIDDEN_ACTIVATIONS",
            "/creatorId",
            f"creatorId {creator!r} is not a public-activation user",
            creator,
        )
    if ctx.values_checked:
        return
    lo, hi = row.get("binMin"), row.get("binMax")
    if isinstance(lo, int | float) and isinstance(hi, int | float) and lo != -1 and lo > hi:
        ctx.report("INCONSISTENT", "/binMin", f"binMin {lo} > binMax {hi}")
    outside = qualifying_outside_bin(row, ("qualifyingTokenIndex", "binMin", "binMax"))
    if outside is not None:
        checker.report_once("INCONSISTENT", "/qualifyingTokenIndex", outside, "qualifying")


def _neuron(ctx: FileContext, row: dict[str, Any], index: str, src: _Source) -> None:
    key = _key(index)
    if key in src.neuron_indices:
        ctx.report("DUPLICATE_FEATURE", "/index", f"feature {index} has another Neuron row")
    src.neuron_indices.add(key, ctx.file, ctx.line or 0)
    if ctx.values_checked:
        return
    for prefix in ("pos", "neg"):
        same_length(ctx, row, [], f"{prefix}_str", f"{prefix}_values")
    for hist in ("freq_hist_data_bar", "logits_hist_data_bar"):
        same_length(ctx, row, [], f"{hist}_values", f"{hist}_heights")
        check_edges(ctx, row.get(f"{hist}_values"), f"/{hist}_values", strict=True)
    stored, actual = row.get("maxActApprox"), src.activation_max.get(key)
    if actual is None or not isinstance(stored, int | float) or close(stored, actual):
        return

    def repair() -> str:
        row["maxActApprox"] = actual
        return f"maxActApprox {stored} -> {actual}"

    ctx.report(
        "MAX_VALUE_MISMATCH",
        "/maxActApprox",
        f"maxActApprox={stored} but its activations reach {actual}",
        repair=repair,
    )
