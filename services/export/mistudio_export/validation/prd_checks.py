"""Checks of the PRD layout: metadata.json, features/{i}.json[.gz], explanations.json."""

from __future__ import annotations

import array
import heapq
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from mistudio_common.dashboard_options import Component

from mistudio_export.formats import prd_json
from mistudio_export.formats.upload_payloads import MAX_EXPLANATION_CHARS
from mistudio_export.validation.checks import (
    check_example,
    check_histogram,
    close,
    get_dict,
    get_list,
    get_number,
    numbers,
)
from mistudio_export.validation.context import (
    FileContext,
    Session,
    load_document,
    load_outline,
    save_document,
)
from mistudio_export.validation.naming_checks import check_names
from mistudio_export.validation.outline import PrdFeature, value
from mistudio_export.validation.report import Severity
from mistudio_export.validation.scan import scan
from mistudio_export.validation.schema_check import check_schema

FEATURE_FILE = re.compile(r"^(\d+)\.json(\.gz)?$")
PRD_MIN_EXAMPLES = 10
_FEATURE_DECODER = msgspec.json.Decoder(PrdFeature)


def validate_prd(session: Session, directory: Path) -> None:
    meta = _metadata(session, directory)
    indices = _features(session, directory, meta)
    path = directory / prd_json.EXPLANATIONS_FILE
    if path.is_file():
        _explanations(session, path, indices)


def _metadata(session: Session, directory: Path) -> dict[str, Any] | None:
    path = directory / prd_json.METADATA_FILE
    if not path.is_file():
        ctx = session.context(path, reading=False)
        ctx.report("MISSING_FILE", "", "metadata.json is missing (PRD FR-2.3)")
        return None
    ctx, doc = load_document(session, path)
    if doc is None:
        return None
    scan(ctx, doc)
    check_schema(ctx, doc, "prd_metadata")
    if isinstance(doc, dict) and isinstance(doc.get("neuronpedia_id"), str):
        model, _, source = doc["neuronpedia_id"].partition("/")
        layer = doc.get("layer") if isinstance(doc.get("layer"), int) else None
        check_names(
            ctx, model, source, model_where="/neuronpedia_id", source_where="/neuronpedia_id",
            layer=layer,
        )  # fmt: skip
        if doc.get("model_id") not in (None, model):
            ctx.report(
                "INCONSISTENT",
                "/neuronpedia_id",
                f"model {model!r} differs from model_id {doc.get('model_id')!r}",
            )
    save_document(ctx, path, doc)
    return doc if isinstance(doc, dict) else None


class FeatureFiles:
    """The names in features/ that name a feature file, as two columns (index, gzipped) where
    the name is the one the writer gives, ``{index}.json[.gz]``: 9 bytes a file where a list of
    Paths took about 600. Any other match (leading zeros, an index beyond 64 bits) is kept as
    text apart."""

    def __init__(self, folder: Path) -> None:
        indices, gzipped = array.array("q"), array.array("b")
        self.odd: list[tuple[int, str]] = []
        self.unexpected: list[str] = []
        for name in _names(folder):
            m = FEATURE_FILE.match(name)
            if m is None:
                self.unexpected.append(name)
                continue
            index = int(m.group(1))
            if m.group(1) == str(index) and index < 2**63:
                indices.append(index)
                gzipped.append(m.group(2) is not None)
            else:
                self.odd.append((index, name))
        self._index = np.frombuffer(indices, dtype=np.int64)  # [files]
        self._gz = np.frombuffer(gzipped, dtype=np.int8)  # [files]
        order = np.lexsort((self._gz, self._index))  # ".json" sorts before ".json.gz"
        self._index, self._gz = self._index[order], self._gz[order]
        self.odd.sort()
        self.unexpected.sort()
        self.indices = np.unique(self._index)  # [features], sorted
        self._odd_indices = {i for i, _ in self.odd if not self._in_columns(i)}
        self.n_features = len(self.indices) + len(self._odd_indices)

    def __contains__(self, index: int) -> bool:
        return self._in_columns(index) or index in self._odd_indices

    def _in_columns(self, index: int) -> bool:
        if not 0 <= index < 2**63:
            return False
        at = int(np.searchsorted(self.indices, index))
        return at < len(self.indices) and bool(self.indices[at] == index)

    def by_index(self) -> Iterator[tuple[int, list[str]]]:
        """(index, names) in ascending order, each index's names sorted."""
        written = (
            (i, f"{i}.json.gz" if gz else f"{i}.json")
            for i, gz in zip(self._index.tolist(), self._gz.tolist(), strict=True)
        )
        merged = heapq.merge(written, self.odd)
        for index, group in itertools.groupby(merged, key=lambda entry: entry[0]):
            yield index, [name for _, name in group]


def _names(folder: Path) -> Iterator[str]:
    try:
        with os.scandir(folder) as entries:
            yield from (entry.name for entry in entries)
    except (FileNotFoundError, NotADirectoryError):
        return


def _features(session: Session, directory: Path, meta: dict[str, Any] | None) -> FeatureFiles:
    folder = directory / prd_json.FEATURES_DIR
    files = FeatureFiles(folder)
    for name in files.unexpected:
        session.context(folder / name, reading=False).report(
            "UNEXPECTED_FILE", "", "feature files are named {feature_index}.json[.gz]"
        )
    suffix = meta.get("feature_file_suffix") if meta else None
    for index, names in files.by_index():
        for name in names[1:]:
            session.context(folder / name, reading=False).report(
                "DUPLICATE_FEATURE", "", f"feature {index} also in {names[0]}"
            )
        path = folder / names[0]
        if index in session.walk_features:
            ctx, doc = load_document(session, path)
            shape = None
        else:
            loaded = load_outline(session, path, _FEATURE_DECODER)
            ctx, doc, shape = loaded.ctx, loaded.doc, loaded.outline
        if suffix and not path.name.endswith(str(suffix)):
            ctx.report("INCONSISTENT", "", f"metadata says feature files end in {suffix}")
        if shape is not None:
            _check_index(ctx, value(shape.feature_index), index)
        elif doc is not None and ctx.values_checked and index not in session.walk_features:
            _check_index(ctx, _index_of(doc), index)
        elif doc is not None:
            check_feature(ctx, doc, index, _omitted(meta))
            save_document(ctx, path, doc)
    n_meta = meta.get("n_features") if meta else None
    if isinstance(n_meta, int) and n_meta != files.n_features:
        ctx = session.context(directory / prd_json.METADATA_FILE, reading=False)
        ctx.report(
            "COUNT_MISMATCH", "/n_features", f"n_features={n_meta} but {files.n_features} files"
        )
    return files


def _omitted(meta: dict[str, Any] | None) -> frozenset[str]:
    """The parts metadata.json says were left out: their absence is no problem."""
    given = meta.get("omitted_components") if meta else None
    return (
        frozenset(c for c in given if isinstance(c, str))
        if isinstance(given, list)
        else frozenset()
    )


def check_feature(
    ctx: FileContext, doc: Any, expected_index: int, omitted: frozenset[str] = frozenset()
) -> None:
    """All checks of one PRD feature document, repairing in place when fixing."""
    scan(ctx, doc)
    check_schema(ctx, doc, "prd_feature")
    if not isinstance(doc, dict):
        return
    _check_index(ctx, _index_of(doc), expected_index)
    acts = get_list(doc, "activations")
    top = [
        check_example(ctx, ex, ["activations", k], max_key="max_value", index_key="max_token_index")
        for k, ex in enumerate(acts)
    ]
    grouped = _groups(ctx, doc.get("quantile_groups"))
    stats = get_dict(doc, "statistics")
    top_omitted = Component.TOP_EXAMPLES.value in omitted
    _statistics(ctx, stats, acts, [m for m in top if m is not None], grouped, top_omitted)
    hist_total = (
        None
        if Component.ACTIVATION_HISTOGRAM.value in omitted
        else check_histogram(ctx, doc.get("histogram"), ["histogram"], total_key="nonzero_count")
    )
    nonzero = stats.get("nonzero_count")
    if hist_total is not None and isinstance(nonzero, int) and hist_total != nonzero:
        ctx.report(
            "HISTOGRAM_TOTAL_MISMATCH",
            "/histogram/counts",
            f"counts sum to {hist_total}, statistics.nonzero_count={nonzero}",
            severity=Severity.WARNING,
        )
    check_histogram(
        ctx, doc.get("logit_histogram"), ["logit_histogram"], total_key="total_count",
        severity=Severity.WARNING,
    )  # fmt: skip
    _logit_order(ctx, doc.get("logits"))


def _index_of(doc: Any) -> Any:
    return doc.get("feature_index") if isinstance(doc, dict) else None


def _check_index(ctx: FileContext, index: Any, expected_index: int) -> None:
    """``index``: the document's feature_index (None when it has none)."""
    if isinstance(index, int) and index != expected_index:
        ctx.report(
            "INDEX_FILE_MISMATCH",
            "/feature_index",
            f"feature_index={index} in the file of feature {expected_index}",
        )


def _groups(ctx: FileContext, groups: Any) -> list[float]:
    maxima: list[float] = []
    for g_i, g in enumerate(groups if isinstance(groups, list) else []):
        lo, hi = get_number(g, "bin_min"), get_number(g, "bin_max")
        if lo is not None and hi is not None and lo > hi:
            ctx.report("INCONSISTENT", f"/quantile_groups/{g_i}", f"bin_min {lo} > bin_max {hi}")
        for k, ex in enumerate(get_list(g, "examples")):
            base = ["quantile_groups", g_i, "examples", k]
            m = check_example(ctx, ex, base, max_key="max_value", index_key="max_token_index")
            if m is None:
                continue
            maxima.append(m)
            # the sampled token lies in the bin; the window's maximum may lie above it
            values = numbers(ex.get("values")) or []
            if (
                lo is not None
                and hi is not None
                and not any(lo - 1e-5 <= v <= hi + 1e-5 for v in values)
            ):
                ctx.report(
                    "INCONSISTENT",
                    f"/quantile_groups/{g_i}/examples/{k}",
                    f"no value of the example lies in its bin [{lo}, {hi}]",
                )
    return maxima


def _statistics(
    ctx: FileContext,
    stats: dict[str, Any],
    acts: list[Any],
    top: list[float],
    grouped: list[float],
    top_omitted: bool,
) -> None:
    dead = stats.get("dead_feature") is True
    n_examples = len(top) + len(grouped)
    if not acts and not dead and not top_omitted:
        ctx.report("EMPTY_ARRAY", "/activations", "a live feature (dead_feature false) has none")
    elif not dead and n_examples < PRD_MIN_EXAMPLES:
        ctx.report("FEW_EXAMPLES", "/activations", f"{n_examples} examples, PRD minimum 10")
    freq = stats.get("activation_frequency")
    if dead and (acts or (isinstance(freq, int | float) and freq > 0)):
        ctx.report("INCONSISTENT", "/statistics/dead_feature", "dead, yet it has activations")
    smax = get_number(stats, "max_activation")
    if smax is None or not (top or grouped):
        return
    highest = max(top + grouped)
    if highest > smax and not close(highest, smax):

        def repair() -> str:
            stats["max_activation"] = highest
            return f"max_activation {smax} -> {highest}"

        ctx.report(
            "STATS_MAX_MISMATCH",
            "/statistics/max_activation",
            f"an example reaches {highest}, above max_activation={smax}",
            repair=repair,
        )
    elif top and len(top) == len(acts) and not close(max(top), smax):
        ctx.report(
            "STATS_MAX_MISMATCH",
            "/statistics/max_activation",
            f"strongest example {max(top)} is below max_activation={smax}",
            severity=Severity.WARNING,
        )


def _logit_order(ctx: FileContext, logits: Any) -> None:
    for key, sign in (("top_positive", -1), ("top_negative", 1)):
        values = numbers([e.get("value") for e in get_list(logits, key) if isinstance(e, dict)])
        if values and any(sign * (b - a) < 0 for a, b in itertools.pairwise(values)):
            ctx.report("INCONSISTENT", f"/logits/{key}", f"{key} is not sorted by value")


def _explanations(session: Session, path: Path, indices: FeatureFiles) -> None:
    ctx, doc = load_document(session, path)
    if doc is None:
        return
    scan(ctx, doc)
    check_schema(ctx, doc, "prd_explanations")
    seen: set[int] = set()
    for k, entry in enumerate(get_list(doc, "features")):
        index = entry.get("feature_index") if isinstance(entry, dict) else None
        if not isinstance(index, int):
            continue
        if index in seen:
            ctx.report("DUPLICATE_FEATURE", f"/features/{k}", f"feature {index} listed twice")
        seen.add(index)
        if indices.n_features and index not in indices:
            ctx.report("ORPHAN_ROW", f"/features/{k}", f"no feature file for feature {index}")
        for j, e in enumerate(get_list(entry, "explanations")):
            text = e.get("description") if isinstance(e, dict) else None
            if isinstance(text, str) and len(text) > MAX_EXPLANATION_CHARS:
                ctx.report(
                    "LIMIT_EXCEEDED",
                    f"/features/{k}/explanations/{j}/description",
                    f"{len(text)} characters; the upload payload cuts it to 512",
                    severity=Severity.INFO,
                )
    save_document(ctx, path, doc)
