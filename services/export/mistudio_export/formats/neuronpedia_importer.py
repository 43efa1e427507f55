"""Neuronpedia's database-row export, the layout its importer reads (format B).

    {modelId}/{layer}-{sourceSet}/
        model.jsonl  sourceset.jsonl  source.jsonl  release.jsonl
        features/batch-N.jsonl.gz  activations/batch-N.jsonl.gz  explanations/batch-N.jsonl.gz
        explanations-pending/batch-N.jsonl.gz

Each line is one row of table Neuron, Activation or Explanation, keyed by the exact column names.
The importer takes its column list from the first line of a file, so every line carries the same
keys (``*_COLUMNS`` below) and NOT NULL columns are never null. Batch N holds the features whose
index lies in [N*batch_size, (N+1)*batch_size), as in Neuronpedia's own dump.

Neuronpedia inserts each file with ``ON CONFLICT DO NOTHING`` (apps/webapp/lib/db/import.ts), so
row ids are derived from content (a re-export is idempotent, two SAEs never collide), and an
explanation row must name an existing ExplanationType and ExplanationModelType (or NULL) or the
whole file fails its foreign keys. Explanations whose type or explainer model Neuronpedia lacks
therefore go to ``explanations-pending/``, a folder its importer does not read; the archive README
says what to ask the maintainers to add. Values the importer would otherwise leave out follow
Neuronpedia's converter (utils/neuronpedia-utils/.../convert-saedashboard-to-neuronpedia-export.py):
``hookName``, ``dfaMaxValue`` 0 / ``dfaTargetIndex`` -1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mistudio_common.dashboard import FeatureDashboard, Histogram
from mistudio_common.errors import InvalidArgument

from mistudio_export.formats import bulk_json, jsonio
from mistudio_export.formats.bulk_json import ListOf, Quoted, Rendered, StringTable, each
from mistudio_export.formats.columns import (
    TOP_SECTION,
    ExampleColumns,
    Floats,
    Ints,
    section_lists,
)
from mistudio_export.formats.neuronpedia_explanations import (
    PENDING_EXPLANATIONS,
    importable,
    neuronpedia_type,
)
from mistudio_export.formats.output import FormatOutput
from mistudio_export.records import ExplanationRecord, NeuronpediaNaming, SaeInfo

DEFAULT_BATCH_SIZE = 1024

NEURON_COLUMNS = (
    "modelId", "layer", "index", "sourceSetName", "creatorId", "createdAt", "maxActApprox",
    "hasVector", "vector", "vectorLabel", "vectorDefaultSteerStrength", "hookName",
    "topkCosSimIndices", "topkCosSimValues",
    "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1",
    "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist",
)  # fmt: skip
ACTIVATION_COLUMNS = (
    "id", "modelId", "layer", "index", "tokens", "values", "maxValue", "maxValueTokenIndex",
    "minValue", "creatorId", "createdAt", "dataSource", "dataIndex",
    "dfaValues", "dfaTargetIndex", "dfaMaxValue", "lossValues", "logitContributions",
    "binMin", "binMax", "binContains", "qualifyingTokenIndex", "zIndices", "zValues",
)  # fmt: skip
EXPLANATION_COLUMNS = (
    "id", "modelId", "layer", "index", "description", "authorId", "typeName",
    "explanationModelName", "createdAt",
)  # fmt: skip

NOT_NULL = {
    "Neuron": ("modelId", "layer", "index", "frac_nonzero"),
    "Activation": (
        "id", "modelId", "layer", "index", "maxValue", "maxValueTokenIndex", "minValue",
        "creatorId",
    ),
    "Explanation": ("id", "modelId", "layer", "index", "description", "authorId"),
}  # fmt: skip
"""NOT NULL columns a row must fill (frac_nonzero has a default, but the importer's explicit
column list turns a missing value into NULL)."""

CONVERTER_DIFFERENCES: dict[str, tuple[bool, str]] = {
    "Neuron.index": (False, "text, as the column stores it (the converter writes an int)"),
    "Activation.index": (False, "text, as the column stores it (the converter writes an int)"),
    "Neuron.sourceSetName": (False, "names the source set (the converter leaves it null)"),
    "Neuron.createdAt": (False, "the export's time, so re-exports are byte-identical"),
    "Activation.createdAt": (False, "the export's time, so re-exports are byte-identical"),
    "Activation.id": (False, "derived from the example, so a re-export keeps its ids"),
    "Activation.dataSource": (False, "the dataset the example came from (converter: null)"),
    "Activation.dataIndex": (False, "the document (text line, story) it came from (null)"),
    "Activation.values": (True, "float32 shortest form, not SAEDashboard's 5 decimals"),
    "Activation.maxValue": (True, "float32 shortest form, not SAEDashboard's 5 decimals"),
    "Activation.minValue": (True, "float32 shortest form, not SAEDashboard's 5 decimals"),
    "Activation.binMin": (True, "float32 shortest form, not SAEDashboard's 5 decimals"),
    "Activation.binMax": (True, "float32 shortest form, not SAEDashboard's 5 decimals"),
    "Activation.binContains": (True, "float32 shortest form, not SAEDashboard's 5 decimals"),
    "Neuron.maxActApprox": (True, "float32 shortest form, not SAEDashboard's 5 decimals"),
    "Neuron.vectorDefaultSteerStrength": (True, "maxActApprox, in the same precision"),
    "Neuron.pos_values": (True, "float32 shortest form, not SAEDashboard's 5 decimals"),
    "Neuron.neg_values": (True, "float32 shortest form, not SAEDashboard's 5 decimals"),
    "Neuron.freq_hist_data_bar_values": (True, "exact bin centres, not rounded"),
    "Neuron.logits_hist_data_bar_values": (True, "exact bin centres, not rounded"),
}
"""Where a row differs from what Neuronpedia's converter makes of our ``saedashboard/`` batches:
column -> (only in rounding, why). Listed in the archive README; every other column is equal."""
MODEL_LAYERS = range(1, 128)
"""Model.layers Neuronpedia's model API accepts (apps/webapp/app/api/model/new/route.tsx)."""


def bin_centres(edges: list[float]) -> list[float]:
    """Neuronpedia plots histogram bars at bin centres: n values for n+1 edges (float64 sums
    halved, as Python's floats would give them)."""
    both = np.array(edges, np.float64)
    with np.errstate(all="ignore"):  # inf and NaN as Python's floats make them, unwarned
        return ((both[:-1] + both[1:]) / 2).tolist()  # type: ignore[no-any-return]


def _hist_columns(h: Histogram) -> tuple[list[float], list[int]]:
    if len(h.bin_edges) != len(h.counts) + 1:
        return [], []
    return bin_centres(list(h.bin_edges)), list(h.counts)


def neuron_row(
    d: FeatureDashboard, info: SaeInfo, naming: NeuronpediaNaming, max_act_approx: float
) -> dict[str, Any]:
    """``max_act_approx``: the largest activation among the stored examples, as Neuronpedia's
    converters compute it (``ExampleColumns.feature_max``)."""
    freq_values, freq_heights = _hist_columns(d.activation_histogram)
    logit_values, logit_heights = _hist_columns(d.logit_histogram)
    pos = sorted(d.top_positive_logits, key=lambda e: e.rank)
    neg = sorted(d.top_negative_logits, key=lambda e: e.rank)
    row: dict[str, Any] = {column: [] for column in NEURON_COLUMNS}
    row.update(
        modelId=naming.model_id,
        layer=naming.source_id,
        index=str(d.feature_index),
        sourceSetName=naming.source_set,
        creatorId=naming.creator_id,
        createdAt=info.created_at,
        maxActApprox=max_act_approx,
        hasVector=False,
        vectorLabel=None,
        # The converter, seeing SAEDashboard's "vector" key, names the hook and sets the steer
        # strength to maxActApprox; equal rows whichever way a feature reaches Neuronpedia.
        vectorDefaultSteerStrength=max_act_approx,
        hookName=info.hook_point,
        neg_str=[e.token for e in neg],
        neg_values=[e.value for e in neg],
        pos_str=[e.token for e in pos],
        pos_values=[e.value for e in pos],
        frac_nonzero=d.statistics.activation_frequency,
        freq_hist_data_bar_heights=freq_heights,
        freq_hist_data_bar_values=freq_values,
        logits_hist_data_bar_heights=logit_heights,
        logits_hist_data_bar_values=logit_values,
    )
    return row


def activation_ids(naming: NeuronpediaNaming, *columns: Sequence[Any]) -> list[str]:
    """Deterministic cuid-like ids, one per key, given as its parts' columns: the example's
    feature index, section name and place in it, then its origin (dataset, document row,
    offset, number of values). Re-exporting the same feature gives the same ids, while a
    recomputed example gets a new one (the importer skips rows whose id exists)."""
    # one format call per key, its parts written as str() writes them
    key = naming.neuronpedia_id.replace("{", "{{").replace("}", "}}") + "\x1f{}" * len(columns)
    return jsonio.stable_ids(list(map(key.format, *columns)))


def _section_name(section: int) -> str:
    return "top" if section == TOP_SECTION else f"q{section - 1}"


def activation_rows(
    columns: ExampleColumns, info: SaeInfo, naming: NeuronpediaNaming
) -> tuple[Rendered, Ints, Floats]:
    """The examples that have values as Activation rows (JSON Lines, rendered in bulk): top
    examples as the -1/max/-1 section, then each quantile group as its own section. Also which
    rows of ``columns`` they are, and their largest values."""
    kept = np.flatnonzero(columns.n_values > 0)
    top, top_at, low = columns.value_peaks(kept)
    bins = columns.section_bins(kept, top)
    null_empty = StringTable(empty_as_null=True)
    data_sources = null_empty.render(np.array(null_empty.codes(columns.datasets), np.int64))
    f32 = bulk_json.float32_column
    rendered = bulk_json.rows(
        {
            "id": each(bulk_json.alphanumeric(_row_ids(columns, kept, naming))),
            "modelId": naming.model_id,
            "layer": naming.source_id,
            "index": Quoted(each(bulk_json.numbers(columns.feature_index[kept]))),
            "tokens": ListOf(columns.token_list(kept)),
            "values": ListOf(columns.value_list(columns.value_items, kept)),
            "maxValue": each(bulk_json.numbers(f32(top))),
            "maxValueTokenIndex": each(bulk_json.numbers(top_at)),
            "minValue": each(bulk_json.numbers(f32(low))),
            "creatorId": naming.creator_id,
            "createdAt": info.created_at,
            "dataSource": each(data_sources, columns.dataset_code[kept]),
            "dataIndex": Quoted(each(bulk_json.numbers(columns.source_row[kept]))),
            "dfaValues": [],
            "dfaTargetIndex": -1,
            "dfaMaxValue": 0,
            "lossValues": [],
            "logitContributions": None,
            "binMin": each(bulk_json.numbers(f32(bins[:, 0]))),
            "binMax": each(bulk_json.numbers(f32(bins[:, 1]))),
            "binContains": each(bulk_json.numbers(f32(bins[:, 2]))),
            "qualifyingTokenIndex": each(bulk_json.numbers(columns.qualifying_token_index[kept])),
            "zIndices": None,
            "zValues": None,
        },
        len(kept),
        separator=b"\n",
    )
    return rendered, kept, top


def _row_ids(columns: ExampleColumns, kept: Ints, naming: NeuronpediaNaming) -> list[str]:
    first, _ = columns.section_bounds(kept)
    position, section = columns.position[kept], columns.section[kept]
    n = np.arange(len(kept)) - first[position, section]
    names = [_section_name(s) for s in range(first.shape[1])]
    return activation_ids(
        naming,
        columns.feature_index[kept].tolist(),
        [names[s] for s in section.tolist()],
        n.tolist(),
        [columns.datasets[c] for c in columns.dataset_code[kept].tolist()],
        columns.source_row[kept].tolist(),
        columns.source_offset[kept].tolist(),
        columns.n_values[kept].tolist(),
    )


def explanation_row(
    r: ExplanationRecord, info: SaeInfo, naming: NeuronpediaNaming
) -> dict[str, Any]:
    """Scores are not carried: Neuronpedia keeps them in a table its importer does not read.
    createdAt is NOT NULL there, so an undated label takes the export's time."""
    return {
        "id": r.export_id(naming.neuronpedia_id),
        "modelId": naming.model_id,
        "layer": naming.source_id,
        "index": str(r.feature_index),
        "description": r.description,
        "authorId": naming.creator_id,
        "typeName": neuronpedia_type(r.method),
        "explanationModelName": r.explainer_model or None,
        "createdAt": r.created_at or info.created_at,
    }


def _expl_key(r: ExplanationRecord) -> tuple[str, ...]:
    return (str(r.feature_index), r.method, r.explainer_model, r.description, r.created_at)


def model_row(info: SaeInfo, naming: NeuronpediaNaming) -> dict[str, Any]:
    return {
        "id": naming.model_id,
        "displayName": naming.model_id,
        "displayNameShort": naming.model_id,
        "creatorId": naming.creator_id,
        "tlensId": naming.model_id,
        "dimension": info.d_in,
        "visibility": naming.visibility,
        "instruct": naming.model_id.endswith("-it"),
        "inferenceEnabled": False,
        "layers": info.model_layers,
        "neuronsPerLayer": 0,
        "owner": naming.model_owner or naming.creator_name,
        "website": None,
        "createdAt": info.created_at,
        "updatedAt": info.created_at,
    }


def source_set_row(info: SaeInfo, naming: NeuronpediaNaming) -> dict[str, Any]:
    return {
        "modelId": naming.model_id,
        "name": naming.source_set,
        "description": naming.source_set_description,
        "type": "",
        "creatorName": naming.creator_name,
        "creatorId": naming.creator_id,
        "urls": [naming.url] if naming.url else [],
        "visibility": naming.visibility,
        "releaseName": naming.release_id,
        "hasDashboards": True,
        "createdAt": info.created_at,
    }


def source_row(info: SaeInfo, naming: NeuronpediaNaming) -> dict[str, Any]:
    return {
        "id": naming.source_id,
        "modelId": naming.model_id,
        "setName": naming.source_set,
        "creatorId": naming.creator_id,
        "visibility": naming.visibility,
        "hasDashboards": True,
        "hfRepoId": naming.hf_repo or None,
        "hfFolderId": naming.hf_folder or None,
        "num_prompts": info.n_prompts,
        "num_tokens_in_prompt": info.n_tokens_in_prompt,
        "dataset": info.prompts_dataset,
        "notes": None,
        "createdAt": info.created_at,
    }


def release_row(info: SaeInfo, naming: NeuronpediaNaming) -> dict[str, Any]:
    return {
        "name": naming.release_id,
        "description": naming.release_title,
        "descriptionShort": naming.release_title,
        "creatorName": naming.creator_name,
        "creatorNameShort": naming.creator_name,
        "creatorId": naming.creator_id,
        "urls": [naming.url] if naming.url else [],
        "visibility": naming.visibility,
        "createdAt": info.created_at,
    }


def source_dir(root: Path, naming: NeuronpediaNaming) -> Path:
    return root / naming.model_id / naming.source_id


NEURON_FLOAT_LISTS = (
    "neg_values", "pos_values", "freq_hist_data_bar_values", "logits_hist_data_bar_values",
)  # fmt: skip
"""``neuron_row``'s lists of floats, rendered a batch at a time."""


def _features(
    batches: Iterable[ExampleColumns], info: SaeInfo, naming: NeuronpediaNaming
) -> Iterator[tuple[FeatureDashboard, dict[str, Any], bytes]]:
    """Per dashboard: itself, its Neuron row and its Activation lines."""
    for columns in batches:
        rendered, kept, peaks = activation_rows(columns, info, naming)
        maxima = columns.feature_max(kept, peaks)
        lists = section_lists(columns, rendered, kept)
        neurons = [
            neuron_row(d, info, naming, max_act)
            for d, max_act in zip(columns.dashboards, maxima, strict=True)
        ]
        bulk_json.float_lists(neurons, NEURON_FLOAT_LISTS)
        for d, neuron, rows in zip(columns.dashboards, neurons, lists, strict=True):
            yield d, neuron, rendered.lines(int(rows.first[0]), int(rows.stop[-1]))


class _BatchWriter:
    """Collects one batch of rows per stream and writes it when the next batch begins."""

    def __init__(self, directory: Path, batch_size: int) -> None:
        self.directory = directory
        self.batch_size = batch_size
        self.current: int | None = None
        self.flushed: set[int] = set()
        self.lines: dict[str, list[bytes]] = {}

    def add(self, stream: str, feature_index: int, rows: list[dict[str, Any]]) -> None:
        where = f"{stream} of feature {feature_index}"
        self.add_lines(stream, feature_index, jsonio.dumps_lines(rows, where=where))

    def add_lines(self, stream: str, feature_index: int, lines: bytes) -> None:
        """``lines``: rows already serialised, each ending in a newline."""
        batch = feature_index // self.batch_size
        if batch != self.current:
            if batch in self.flushed:
                raise InvalidArgument(
                    f"feature {feature_index} arrived after its batch {batch} was written",
                    field="dashboards",
                    fix="pass dashboards in ascending feature_index order",
                )
            self.flush()
            self.current = batch
        self.lines.setdefault(stream, []).append(lines)

    def flush(self) -> None:
        if self.current is None:
            return
        for stream, parts in sorted(self.lines.items()):
            data = b"".join(parts)
            if data:
                path = self.directory / stream / f"batch-{self.current}.jsonl.gz"
                jsonio.write_document(path, data)
        self.flushed.add(self.current)
        self.current = None
        self.lines = {}


def write_importer_export(
    root: Path,
    info: SaeInfo,
    naming: NeuronpediaNaming,
    batches: Iterable[ExampleColumns],
    explanations: Iterable[ExplanationRecord] = (),
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    source_rows: bool = True,
) -> FormatOutput:
    """Write ``root/{modelId}/{sourceId}/``; dashboards must come in ascending index order.
    The features of an export may be split among writers at batch boundaries, only one of
    them writing the ``source_rows`` (release, model, source set, source)."""
    info.validate()
    naming.validate()
    if info.model_layers not in MODEL_LAYERS or naming.layer >= info.model_layers:
        raise InvalidArgument(
            f"the model has {info.model_layers} layers; Neuronpedia needs 1..127, above the "
            f"SAE's layer {naming.layer}",
            field="sae_info.model_layers",
            fix="pass the model's block count (the compute service reports it as n_layers)",
        )
    if batch_size < 1:
        raise InvalidArgument(f"batch_size={batch_size}", field="batch_size", fix="use >= 1")
    out = source_dir(root, naming)
    heads = (
        ("release.jsonl", release_row(info, naming)),
        ("model.jsonl", model_row(info, naming)),
        ("sourceset.jsonl", source_set_row(info, naming)),
        ("source.jsonl", source_row(info, naming)),
    )
    for name, row in heads if source_rows else ():
        jsonio.write_document(out / name, jsonio.dumps_lines([row], where=name))
    by_feature: dict[int, list[ExplanationRecord]] = {}
    for r in explanations:
        by_feature.setdefault(r.feature_index, []).append(r)
    writer = _BatchWriter(out, batch_size)
    n = 0
    for d, neuron, activations in _features(batches, info, naming):
        writer.add("features", d.feature_index, [neuron])
        writer.add_lines("activations", d.feature_index, activations)
        records = sorted(by_feature.pop(d.feature_index, []), key=_expl_key)
        for stream, kept in (
            ("explanations", [r for r in records if importable(r)]),
            (PENDING_EXPLANATIONS, [r for r in records if not importable(r)]),
        ):
            writer.add(stream, d.feature_index, [explanation_row(r, info, naming) for r in kept])
        n += 1
        if progress is not None:
            progress(n)
    writer.flush()
    notes = tuple(
        f"explanation for feature {i} dropped: no dashboard for it (Neuronpedia needs the feature)"
        for i in sorted(by_feature)
    )
    return FormatOutput(root=out, n_features=n, notes=notes)
