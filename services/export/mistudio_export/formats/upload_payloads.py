"""Request bodies for Neuronpedia's self-serve ``POST /api/feature/upload-batch``.

The route accepts at most 128 features per call; per feature at most 20 top and 20 bottom
logits, at least one activation with 1..1024 tokens, a density in [0, 1] and explanations of
1..512 characters whose method and model (when there is one; a human explanation has none)
already exist on Neuronpedia. It takes no histograms.
Anything cut to fit (long examples, long explanations, features without examples) is listed in
``manifest.json`` notes. The body's keys are those the route's yup schema reads
(hijohnnylin/neuronpedia apps/webapp/app/api/feature/upload-batch/route.tsx at ebb8426f:
``modelId``, ``source``, ``features[]`` of ``index``, ``density``, ``topLogits``/``bottomLogits``
``{token, value}``, ``explanations`` ``{text, methodName, modelName}``, ``activations``
``{tokens, values, quantileMin, quantileMax, quantileFraction}``). It rejects the whole call when
one ``methodName`` is not in Neuronpedia's config, so such explanations are left out (and
noted); a label has no method. No ``modelName`` is sent: the route passes it to its
database insert under that name, but the column is ``explanationModelName``, so Prisma would
refuse the insert and the whole call would fail; the explainer model reaches Neuronpedia through
the importer layout. Schemas: ``schemas/upload_*.json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from mistudio_common.dashboard import FeatureDashboard, LogitEntry
from mistudio_common.errors import InvalidArgument

from mistudio_export.formats import bulk_json, jsonio
from mistudio_export.formats.bulk_json import ListOf, Rendered, StringTable, each
from mistudio_export.formats.columns import (
    TOP_SECTION,
    ExampleColumns,
    Floats,
    Ints,
    section_lists,
)
from mistudio_export.formats.neuronpedia_explanations import (
    KNOWN_EXPLANATION_TYPES,
    neuronpedia_type,
)
from mistudio_export.formats.output import FormatOutput
from mistudio_export.records import ExplanationRecord, NeuronpediaNaming

ENDPOINT = "feature/upload-batch"
MANIFEST_FILE = "manifest.json"
MAX_FEATURES_PER_REQUEST = 128
MAX_LOGITS = 20
MAX_TOKENS_PER_EXAMPLE = 1024
MAX_EXPLANATION_CHARS = 512
MAX_FEATURE_INDEX = 10_000_000


def payload_file_name(n: int) -> str:
    return f"upload-batch-{n}.json"


def truncate_around(
    tokens: list[str], values: list[float], centre: int, limit: int
) -> tuple[list[str], list[float], int]:
    """Keep ``limit`` positions around ``centre``; returns the kept tokens, values and start."""
    if len(tokens) <= limit:
        return tokens, values, 0
    start = int(cut_start(np.array([len(tokens)]), np.array([centre]), limit)[0])
    return tokens[start : start + limit], values[start : start + limit], start


def cut_start(n_tokens: Ints, centre: Ints, limit: int) -> Ints:
    """First kept position of an example longer than ``limit`` cut around ``centre`` (arrays
    or scalars): centred where it can be, shifted inside the example at its ends."""
    return np.minimum(np.maximum(0, centre - limit // 2), n_tokens - limit)


@dataclass
class PayloadNotes:
    """What the manifest says was cut or left out, in feature order."""

    lines: list[str] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def extend(self, other: PayloadNotes) -> None:
        """Appends the notes of later features (written by another process)."""
        self.lines += other.lines
        self.skipped += other.skipped


def activation_rows(columns: ExampleColumns) -> tuple[Rendered, Ints, Ints]:
    """The examples that have values as the API's activations, rendered in bulk; which rows of
    ``columns`` they are; and where each kept example was cut to the API's limit (-1: not)."""
    kept = np.flatnonzero(columns.n_values > 0)
    top, centre, _ = columns.value_peaks(kept)
    quantiles = _quantiles(columns, kept, top)
    token_first, token_stop = columns.token_start[kept], columns.token_start[kept + 1]
    value_first, value_stop = columns.value_start[kept], columns.value_start[kept + 1]
    n_tokens = token_stop - token_first
    cut = n_tokens > MAX_TOKENS_PER_EXAMPLE
    start = np.where(cut, cut_start(n_tokens, centre, MAX_TOKENS_PER_EXAMPLE), 0)
    keep_tokens = np.where(cut, MAX_TOKENS_PER_EXAMPLE, n_tokens)
    n_values = value_stop - value_first
    values_from = value_first + np.minimum(start, n_values)
    values_to = np.where(
        cut, value_first + np.minimum(start + MAX_TOKENS_PER_EXAMPLE, n_values), value_stop
    )
    token_list = bulk_json.items(
        columns.token_items, token_first + start, token_first + start + keep_tokens
    )
    value_list = bulk_json.items(columns.value_items, values_from, values_to)
    f32 = bulk_json.float32_column
    rendered = bulk_json.rows(
        {
            "tokens": ListOf(token_list),
            "values": ListOf(value_list),
            "quantileMin": each(bulk_json.numbers(f32(quantiles[:, 0]))),
            "quantileMax": each(bulk_json.numbers(f32(quantiles[:, 1]))),
            "quantileFraction": each(bulk_json.numbers(f32(quantiles[:, 2]))),
        },
        len(kept),
    )
    return rendered, kept, np.where(cut, start, -1)


def _quantiles(columns: ExampleColumns, kept: Ints, peaks: Floats) -> Floats:
    """[n_kept, 3]: per kept row its section's quantileMin, quantileMax, quantileFraction.

    The API has no -1 'top' marker, so the top section is described by its own range. Its
    fraction is that of the feature's non-zero activations at or above the lowest top
    example's maximum: each top example stands for one of the k largest activations.
    """
    rows = columns.section[kept] == TOP_SECTION
    top_position, top_peaks = columns.position[kept][rows], peaks[rows]
    n_top = np.bincount(top_position, minlength=len(columns.dashboards)).tolist()
    highest = columns.feature_max(kept[rows], top_peaks)
    lowest = np.full(len(columns.dashboards), np.inf)
    np.minimum.at(lowest, top_position, top_peaks)
    table = columns.section_table()
    for position, d in enumerate(columns.dashboards):
        nonzero = d.statistics.nonzero_count
        fraction = n_top[position] / nonzero if nonzero else 0.0
        low = float(lowest[position]) if n_top[position] else 0.0
        sections = [(low, highest[position], fraction)]
        sections += [(g.bin_min, g.bin_max, g.bin_contains) for g in d.quantile_groups]
        table[position, : len(sections)] = [
            (low, high, min(max(share, 0.0), 1.0)) for low, high, share in sections
        ]
    return table[columns.position[kept], columns.section[kept]]


def _cut_notes(columns: ExampleColumns, kept: Ints, cut_at: Ints, notes: PayloadNotes) -> None:
    for row in np.flatnonzero(cut_at >= 0).tolist():
        start = int(cut_at[row])
        example = int(kept[row])
        n = int(columns.token_start[example + 1] - columns.token_start[example])
        index = columns.dashboards[int(columns.position[example])].feature_index
        notes.lines.append(
            f"feature {index}: an example of {n} tokens was cut to positions "
            f"{start}..{start + MAX_TOKENS_PER_EXAMPLE - 1} around its max token "
            f"(the API takes {MAX_TOKENS_PER_EXAMPLE})"
        )


def _explanations(records: list[ExplanationRecord], index: int, notes: PayloadNotes) -> list[Any]:
    out = []
    for r in records:
        text = r.description.strip()
        if not text:
            notes.lines.append(f"feature {index}: an empty explanation was left out")
            continue
        if len(text) > MAX_EXPLANATION_CHARS:
            notes.lines.append(
                f"feature {index}: an explanation of {len(text)} characters was cut to "
                f"{MAX_EXPLANATION_CHARS}"
            )
            text = text[: MAX_EXPLANATION_CHARS - 1].rstrip() + "…"
        type_name = neuronpedia_type(r.method)
        if type_name is not None and type_name not in KNOWN_EXPLANATION_TYPES:
            notes.lines.append(
                f"feature {index}: explanation left out: Neuronpedia has no type {r.method!r}, "
                "and the route would reject the whole call"
            )
            continue
        entry = {"text": text}
        if type_name is not None:  # a label or a human's explanation has no method
            entry["methodName"] = type_name
        out.append(entry)
    return out


def feature_payload(
    d: FeatureDashboard, records: list[ExplanationRecord], examples: _Examples, notes: PayloadNotes
) -> dict[str, Any] | None:
    """One feature of an upload body, or None (noted) when the API could not take it."""
    i = d.feature_index
    if i > MAX_FEATURE_INDEX:
        notes.lines.append(f"feature {i}: index above the API's {MAX_FEATURE_INDEX}, skipped")
        notes.skipped.append(i)
        return None
    notes.lines += examples.cut_notes
    if not examples.count:
        notes.lines.append(f"feature {i}: no activation examples (dead feature?), skipped")
        notes.skipped.append(i)
        return None
    return {
        "index": i,
        "density": min(max(d.statistics.activation_frequency, 0.0), 1.0),
        "topLogits": examples.top_logits,
        "bottomLogits": examples.bottom_logits,
        "activations": examples.rows,
        "explanations": _explanations(records, i, notes),
    }


@dataclass(frozen=True)
class _Examples:
    """One feature's activations and logits, rendered with its batch's."""

    rows: orjson.Fragment
    count: int
    cut_notes: list[str]
    top_logits: Any
    bottom_logits: Any


_LOGIT_FIELDS = {"token": str, "value": float}
"""``_logit``'s keys and types, for rendering a batch's lists in bulk."""


def _logit(e: LogitEntry) -> dict[str, Any]:
    return {"token": e.token, "value": e.value}


def _logit_lists(dashboards: Sequence[FeatureDashboard], strings: StringTable) -> list[list[Any]]:
    """Per dashboard, its first ``MAX_LOGITS`` top (then bottom) logits by rank as the API
    takes them: rendered for the batch at once, or as dicts where a value needs the
    per-record path (which names it)."""
    lists: list[list[Any]] = []
    for kind in ("top_positive_logits", "top_negative_logits"):
        groups = [sorted(getattr(d, kind), key=lambda e: e.rank)[:MAX_LOGITS] for d in dashboards]
        rendered: list[Any] | None = bulk_json.record_lists(groups, _LOGIT_FIELDS, strings)
        if rendered is None:
            rendered = [[_logit(e) for e in g] for g in groups]
        lists.append(rendered)
    return lists


def _features(
    batches: Iterable[ExampleColumns],
) -> Iterator[tuple[FeatureDashboard, _Examples]]:
    strings = StringTable()
    for columns in batches:
        rendered, kept, cut_at = activation_rows(columns)
        lists = section_lists(columns, rendered, kept)
        tops, bottoms = _logit_lists(columns.dashboards, strings)
        for d, rows, top, bottom in zip(columns.dashboards, lists, tops, bottoms, strict=True):
            first, stop = int(rows.first[0]), int(rows.stop[-1])
            notes = PayloadNotes()
            _cut_notes(columns, kept[first:stop], cut_at[first:stop], notes)
            yield d, _Examples(rows.every(), stop - first, notes.lines, top, bottom)


def upload_body(naming: NeuronpediaNaming, features: Sequence[Any]) -> dict[str, Any]:
    return {"modelId": naming.model_id, "source": naming.source_id, "features": features}


def write_upload_payloads(
    out_dir: Path,
    naming: NeuronpediaNaming,
    batches: Iterable[ExampleColumns],
    explanations: Iterable[ExplanationRecord] = (),
    *,
    features_per_request: int = MAX_FEATURES_PER_REQUEST,
) -> FormatOutput:
    """Write ``upload-batch-N.json`` request bodies and a manifest naming them in order."""
    notes = PayloadNotes()
    features = payload_features(batches, explanations, notes)
    return write_payload_bodies(
        out_dir, naming, features, notes, features_per_request=features_per_request
    )


def payload_features(
    batches: Iterable[ExampleColumns],
    explanations: Iterable[ExplanationRecord],
    notes: PayloadNotes,
) -> Iterator[bytes]:
    """Each feature the API takes, serialised as it stands in a request body; what was cut
    or left out is added to ``notes`` as the features go by."""
    by_feature: dict[int, list[ExplanationRecord]] = {}
    for r in explanations:
        by_feature.setdefault(r.feature_index, []).append(r)
    for d, examples in _features(batches):
        records = sorted(
            by_feature.get(d.feature_index, []), key=lambda r: (r.created_at, r.description)
        )
        payload = feature_payload(d, records, examples, notes)
        if payload is not None:
            yield jsonio.dumps(payload, where=f"upload payload of feature {d.feature_index}")


def write_payload_bodies(
    out_dir: Path,
    naming: NeuronpediaNaming,
    features: Iterable[bytes],
    notes: PayloadNotes,
    *,
    features_per_request: int = MAX_FEATURES_PER_REQUEST,
) -> FormatOutput:
    """Packs serialised ``features`` (``payload_features``) into request bodies of
    ``features_per_request``, numbered from 0, then writes the manifest with ``notes`` (read
    once ``features`` is exhausted)."""
    naming.validate()
    if not 1 <= features_per_request <= MAX_FEATURES_PER_REQUEST:
        raise InvalidArgument(
            f"features_per_request={features_per_request}",
            field="features_per_request",
            fix=f"use 1..{MAX_FEATURES_PER_REQUEST}, the API's limit",
        )
    pending: list[orjson.Fragment] = []
    files: list[str] = []
    n_features = 0

    def flush() -> None:
        path = out_dir / payload_file_name(len(files))
        body = upload_body(naming, pending)
        jsonio.write_document(path, jsonio.dumps(body, where=path.name))
        files.append(path.name)
        pending.clear()

    for feature in features:
        pending.append(orjson.Fragment(feature))
        n_features += 1
        if len(pending) == features_per_request:
            flush()
    if pending:
        flush()
    manifest = {
        "endpoint": ENDPOINT,
        "modelId": naming.model_id,
        "source": naming.source_id,
        "files": files,
        "n_features": n_features,
        "skipped_features": notes.skipped,
        "notes": notes.lines,
    }
    jsonio.write_document(out_dir / MANIFEST_FILE, jsonio.dumps(manifest, where=MANIFEST_FILE))
    return FormatOutput(root=out_dir, n_features=n_features, notes=tuple(notes.lines))
