"""Checks of SAEDashboard batch files (format A): batch-N.json with a features list."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from mistudio_export.validation.checks import (
    check_edges,
    check_example,
    get_list,
    qualifying_outside_bin,
    same_length,
)
from mistudio_export.validation.context import FileContext, Session, load_outline, save_document
from mistudio_export.validation.naming_checks import check_names
from mistudio_export.validation.outline import Batch, value
from mistudio_export.validation.scan import scan
from mistudio_export.validation.schema_check import check_schema
from mistudio_export.validation.seen import FirstSeen

BATCH_FILE = re.compile(r"^batch-(\d+)\.json$")
_BATCH_DECODER = msgspec.json.Decoder(Batch)


def is_saedashboard_dir(directory: Path) -> bool:
    return any(BATCH_FILE.match(p.name) for p in directory.glob("batch-*.json"))


def validate_saedashboard(session: Session, directory: Path) -> None:
    seen = FirstSeen()
    batches = {
        int(m.group(1)): p
        for p in directory.glob("batch-*.json")
        if (m := BATCH_FILE.match(p.name))
    }
    for n in sorted(batches):
        path = batches[n]
        loaded = load_outline(session, path, _BATCH_DECODER)
        ctx, doc = loaded.ctx, loaded.doc
        if loaded.outline is not None:
            _outlined(ctx, loaded.outline, seen)
            seen.end_file()
            continue
        if doc is None:
            continue
        scan(ctx, doc)
        if not ctx.values_checked:
            check_schema(ctx, doc, "sd_batch")
        if isinstance(doc, dict):
            _names(ctx, doc)
            for k, feature in enumerate(get_list(doc, "features")):
                if isinstance(feature, dict):
                    _feature(ctx, feature, k, seen)
        seen.end_file()
        save_document(ctx, path, doc)


def _outlined(ctx: FileContext, batch: Batch, seen: FirstSeen) -> None:
    """The checks left for a batch whose bytes vouch for its values (the names, duplicates
    across files), from the values they need."""
    names = {"model_id": batch.model_id, "layer": batch.layer, "sae_set": batch.sae_set}
    _names(ctx, {key: value(raw) for key, raw in names.items()})
    for k, feature in enumerate(batch.features):
        _first_place(ctx, value(feature.feature_index), k, seen)


def _names(ctx: FileContext, doc: dict[str, Any]) -> None:
    model, layer, sae_set = doc.get("model_id"), doc.get("layer"), doc.get("sae_set")
    if isinstance(model, str) and isinstance(layer, int) and isinstance(sae_set, str):
        check_names(
            ctx, model, f"{layer}-{sae_set}", model_where="/model_id", source_where="/sae_set"
        )


def _first_place(ctx: FileContext, index: Any, k: int, seen: FirstSeen) -> None:
    """Feature k's index (``index``) reported when an earlier feature had it, else kept."""
    if isinstance(index, int):
        first = seen.where(index)
        if first is not None:
            ctx.report("DUPLICATE_FEATURE", f"/features/{k}", f"feature {index} also in {first[0]}")
        seen.add(index, ctx.file)


def _feature(ctx: FileContext, f: dict[str, Any], k: int, seen: FirstSeen) -> None:
    base: list[Any] = ["features", k]
    _first_place(ctx, f.get("feature_index"), k, seen)
    if ctx.values_checked:  # the rest checks values; duplicates span files
        return
    for prefix in ("pos", "neg"):
        same_length(ctx, f, base, f"{prefix}_str", f"{prefix}_values")
    for hist in ("freq_hist_data_bar", "logits_hist_data_bar"):
        same_length(ctx, f, base, f"{hist}_values", f"{hist}_heights")
        check_edges(ctx, f.get(f"{hist}_values"), f"/features/{k}/{hist}_values", strict=True)
    acts = get_list(f, "activations")
    density = f.get("frac_nonzero")
    if not acts and isinstance(density, int | float) and density > 0:
        ctx.report("EMPTY_ARRAY", f"/features/{k}/activations", f"density {density} but none")
    for j, a in enumerate(acts):
        if check_example(ctx, a, [*base, "activations", j]) is None:
            continue
        q = a.get("qualifying_token_index")
        if isinstance(q, int) and not 0 <= q < len(a["values"]):
            ctx.report(
                "SCHEMA_VIOLATION",
                f"/features/{k}/activations/{j}/qualifying_token_index",
                f"{q} is outside the {len(a['values'])} positions",
            )
        lo, hi = a.get("bin_min"), a.get("bin_max")
        if isinstance(lo, int | float) and isinstance(hi, int | float) and lo != -1 and lo > hi:
            ctx.report("INCONSISTENT", f"/features/{k}/activations/{j}", f"bin_min {lo} > {hi}")
        outside = qualifying_outside_bin(a, ("qualifying_token_index", "bin_min", "bin_max"))
        if outside is not None:
            ctx.report("INCONSISTENT", f"/features/{k}/activations/{j}", outside)
