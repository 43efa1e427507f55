"""The PRD layout (FR-2.1): metadata.json, features/{i}.json[.gz], explanations/explanations.json.

Feature files carry the PRD fields (FR-2.2, Appendix A) and everything else a dashboard holds:
quantile groups, the logit histogram, token ids, example sources, full statistics and the
top-token aggregates. Schemas: ``schemas/prd_{metadata,feature,explanations}.schema.json``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from mistudio_common.dashboard import FeatureDashboard
from mistudio_common.errors import InvalidArgument

from mistudio_export import deflate
from mistudio_export.formats import bulk_json, jsonio
from mistudio_export.formats.bulk_json import ListOf, Rendered, StringTable, each
from mistudio_export.formats.columns import (
    TOP_SECTION,
    ExampleColumns,
    SectionLists,
    section_lists,
)
from mistudio_export.formats.output import FormatOutput
from mistudio_export.formats.prd_heads import HeadParts, head_parts
from mistudio_export.records import ExplanationRecord, FeatureLabel, NeuronpediaNaming, SaeInfo

FORMAT_NAME = "mistudio-prd-json"
METADATA_FILE = "metadata.json"
FEATURES_DIR = "features"
EXPLANATIONS_FILE = "explanations/explanations.json"


def feature_file_name(feature_index: int, *, compressed: bool = False) -> str:
    return f"{FEATURES_DIR}/{feature_index}.json" + (".gz" if compressed else "")


def metadata_document(
    info: SaeInfo, naming: NeuronpediaNaming, *, n_features: int, compressed: bool
) -> dict[str, Any]:
    """FR-2.3 fields, plus what a reader needs to find and check the feature files."""
    return {
        "format": FORMAT_NAME,
        "model_id": info.model_id,
        "sae_id": info.sae_id,
        "neuronpedia_id": naming.neuronpedia_id,
        "hook_point": info.hook_point,
        "layer": info.layer,
        "d_sae": info.d_sae,
        "d_model": info.d_in,
        "d_in": info.d_in,
        "architecture": info.architecture,
        "training_dataset": info.training_dataset,
        "n_training_tokens": info.n_training_tokens,
        "l0": info.l0,
        "explained_variance": info.explained_variance,
        "created_at": info.created_at,
        "miStudio_version": info.mistudio_version,
        "export_version": info.export_version,
        "dashboard_dataset": info.prompts_dataset,
        "n_prompts": info.n_prompts,
        "n_tokens_in_prompt": info.n_tokens_in_prompt,
        "prepend_bos": info.prepend_bos,
        "omitted_components": list(info.omitted_components),
        "n_features": n_features,
        "feature_file_suffix": ".json.gz" if compressed else ".json",
    }


def example_rows(columns: ExampleColumns) -> Rendered:
    """Every example of a column batch as its PRD object, rendered in bulk."""
    names = StringTable()
    datasets = names.render(np.array(names.codes(columns.datasets), np.int64))
    max_value = bulk_json.float32_column(columns.max_value)
    return bulk_json.rows(
        {
            "tokens": ListOf(columns.token_list()),
            "token_ids": ListOf(columns.id_list(bulk_json.numbers(columns.token_ids))),
            "values": ListOf(columns.value_list(columns.value_items)),
            "max_value": each(bulk_json.numbers(max_value)),
            "max_token_index": each(bulk_json.numbers(columns.max_token_index)),
            "source": {
                "dataset": each(datasets, columns.dataset_code),
                "row": each(bulk_json.numbers(columns.source_row)),
                "offset": each(bulk_json.numbers(columns.source_offset)),
            },
        },
        columns.n_rows,
    )


def _group(bins: tuple[Any, Any, Any], examples: orjson.Fragment) -> dict[str, Any]:
    return {"bin_min": bins[0], "bin_max": bins[1], "bin_contains": bins[2], "examples": examples}


def feature_document(
    d: FeatureDashboard, examples: SectionLists, heads: HeadParts, position: int
) -> dict[str, Any]:
    """One feature in the PRD layout; ``activations`` are the top examples, as in FR-2.2.
    ``examples`` holds the feature's rendered example rows (``example_rows``), ``heads`` its
    batch's other parts, the feature at ``position``."""
    return {
        "feature_index": d.feature_index,
        "activations": examples.section(TOP_SECTION),
        "quantile_groups": [
            _group(bins, examples.section(n + 1))
            for n, bins in enumerate(heads.group_bins[position])
        ],
        "logits": {
            "top_positive": heads.top_positive[position],
            "top_negative": heads.top_negative[position],
        },
        "histogram": heads.histogram[position],
        "logit_histogram": heads.logit_histogram[position],
        "statistics": heads.statistics[position],
        "top_tokens": heads.top_tokens[position],
        "top_tokens_metric": d.top_tokens_metric.value,
    }


def _explanation_sort_key(r: ExplanationRecord) -> tuple[str, str, str, str]:
    return (r.created_at, r.method, r.explainer_model, r.description)


def explanations_document(
    records: Iterable[ExplanationRecord],
    naming: NeuronpediaNaming,
    export_version: str,
    labels: Iterable[FeatureLabel] = (),
) -> dict[str, Any]:
    """FR-5.1: per feature, its label and category and all its explanations (the label among
    them), in a stable order whatever the input order."""
    by_feature: dict[int, list[ExplanationRecord]] = defaultdict(list)
    labelled = {label.feature_index: label for label in labels}
    for r in [*records, *(label.as_explanation() for label in labelled.values())]:
        by_feature[r.feature_index].append(r)
    features = []
    for index in sorted(by_feature):
        entry: dict[str, Any] = {"feature_index": index}
        if index in labelled:
            entry.update(label=labelled[index].label, category=labelled[index].category)
        entry["explanations"] = [
            {
                "id": r.export_id(naming.neuronpedia_id),
                "description": r.description,
                "method": r.method,
                "model": r.explainer_model,
                "score": r.score,
                "created_at": r.created_at,
            }
            for r in sorted(by_feature[index], key=_explanation_sort_key)
        ]
        features.append(entry)
    return {"export_version": export_version, "features": features}


def write_prd_export(
    out_dir: Path,
    info: SaeInfo,
    naming: NeuronpediaNaming,
    batches: Iterable[ExampleColumns],
    explanations: Iterable[ExplanationRecord] = (),
    *,
    labels: Iterable[FeatureLabel] = (),
    compress_features: bool = False,
    progress: Callable[[int], None] | None = None,
) -> FormatOutput:
    """Write the PRD layout under ``out_dir``; the batches' dashboards are streamed, one file
    each."""
    info.validate()
    naming.validate()
    n_features = write_feature_files(
        out_dir, batches, compress_features=compress_features, progress=progress
    )
    write_prd_documents(out_dir, info, naming, explanations, labels, n_features, compress_features)
    return FormatOutput(root=out_dir, n_features=n_features)


def write_feature_files(
    out_dir: Path,
    batches: Iterable[ExampleColumns],
    *,
    compress_features: bool = False,
    progress: Callable[[int], None] | None = None,
    reuse: Callable[[int, str], bytes | None] | None = None,
) -> int:
    """Writes one file per dashboard of ``batches`` and returns how many; a part of the
    features may be written this way by each of several processes, and
    ``write_prd_documents`` then once.

    ``reuse(feature_index, file_name)`` may return an earlier archive's bytes for an unchanged
    feature (a delta export copies them). The files are written in place (``write_fresh``):
    the caller clears the features folder first and keeps none of a write that did not end."""
    seen: set[int] = set()
    strings = StringTable()
    (out_dir / FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    for columns in batches:
        before = len(seen)
        for d in columns.dashboards:
            if d.feature_index in seen:
                raise _duplicate(d.feature_index)
            seen.add(d.feature_index)
        files = _feature_files(columns, strings, compress_features, reuse)
        for n, (name, data) in enumerate(files, start=before + 1):
            jsonio.write_fresh(out_dir / name, data)
            if progress is not None:
                progress(n)
    return len(seen)


def _feature_files(
    columns: ExampleColumns,
    strings: StringTable,
    compressed: bool,
    reuse: Callable[[int, str], bytes | None] | None,
) -> list[tuple[str, bytes]]:
    """The batch's feature files, name and bytes: an earlier archive's where ``reuse`` has
    them, else the feature's document, its parts rendered for the batch at once."""
    rendered = example_rows(columns)
    lists = section_lists(columns, rendered, np.arange(columns.n_rows))
    heads = head_parts(columns.dashboards, strings)
    files: list[tuple[str, bytes]] = []
    for position, (d, examples) in enumerate(zip(columns.dashboards, lists, strict=True)):
        name = feature_file_name(d.feature_index, compressed=compressed)
        data = reuse(d.feature_index, name) if reuse is not None else None
        if data is None:
            document = feature_document(d, examples, heads, position)
            data = (
                jsonio.dumps_plain(document)  # nothing to convert: every value checked in bulk
                if heads.rendered
                else jsonio.dumps(document, where=f"feature {d.feature_index}")
            )
            data = deflate.gzip_bytes(data) if compressed else data
        files.append((name, data))
    return files


def write_prd_documents(
    out_dir: Path,
    info: SaeInfo,
    naming: NeuronpediaNaming,
    explanations: Iterable[ExplanationRecord],
    labels: Iterable[FeatureLabel],
    n_features: int,
    compress_features: bool,
) -> None:
    """The explanations and metadata documents, which cover every feature file written."""
    expl = explanations_document(explanations, naming, info.export_version, labels)
    jsonio.write_document(out_dir / EXPLANATIONS_FILE, jsonio.dumps(expl, where="explanations"))
    meta = metadata_document(info, naming, n_features=n_features, compressed=compress_features)
    jsonio.write_document(out_dir / METADATA_FILE, jsonio.dumps(meta, where="metadata"))


def _duplicate(index: int) -> InvalidArgument:
    return InvalidArgument(
        f"feature {index} appears twice in the dashboards",
        field="dashboards",
        fix="pass each feature once",
    )
