"""Checks of upload payloads: manifest.json and upload-batch-N.json request bodies.

Auto-fix trims what exceeds the API's per-feature limits (logits, explanation length, tokens per
example); a body with too many features must be rewritten by the payload writer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from mistudio_export.formats.upload_payloads import (
    MANIFEST_FILE,
    MAX_EXPLANATION_CHARS,
    MAX_LOGITS,
    MAX_TOKENS_PER_EXAMPLE,
    truncate_around,
)
from mistudio_export.validation.checks import check_example, get_list, get_number, numbers
from mistudio_export.validation.context import (
    FileContext,
    Session,
    load_document,
    load_outline,
    save_document,
)
from mistudio_export.validation.naming_checks import check_names
from mistudio_export.validation.outline import Payload, value
from mistudio_export.validation.packaging_checks import is_packaging_manifest
from mistudio_export.validation.scan import scan
from mistudio_export.validation.schema_check import check_schema
from mistudio_export.validation.seen import FirstSeen

PAYLOAD_FILE = re.compile(r"^upload-batch-(\d+)\.json$")
_PAYLOAD_DECODER = msgspec.json.Decoder(Payload)


def is_upload_dir(directory: Path) -> bool:
    manifest = directory / MANIFEST_FILE
    if any(directory.glob("upload-batch-*.json")):
        return True
    return manifest.is_file() and not is_packaging_manifest(manifest)


def validate_upload(session: Session, directory: Path) -> None:
    manifest = _manifest(session, directory)
    payloads = {
        int(m.group(1)): p
        for p in directory.glob("upload-batch-*.json")
        if (m := PAYLOAD_FILE.match(p.name))
    }
    listed = manifest.get("files") if isinstance(manifest.get("files"), list) else None
    if listed is not None:
        for name in listed:
            if isinstance(name, str) and not (directory / name).is_file():
                session.context(directory / name, reading=False).report(
                    "MISSING_FILE", "", "listed in manifest.json but missing"
                )
    seen = FirstSeen()
    for n in sorted(payloads):
        path = payloads[n]
        if listed is not None and path.name not in listed:
            session.context(path, reading=False).report(
                "UNEXPECTED_FILE", "", "not listed in manifest.json, so it would not be sent"
            )
        loaded = load_outline(session, path, _PAYLOAD_DECODER)
        ctx, doc = loaded.ctx, loaded.doc
        if loaded.outline is not None:
            _outlined(ctx, loaded.outline, manifest, seen)
            seen.end_file()
            continue
        if doc is not None:
            _payload(ctx, doc, manifest, seen)
            seen.end_file()
            save_document(ctx, path, doc)


def _manifest(session: Session, directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        session.context(path, reading=False).report(
            "MISSING_FILE", "", "manifest.json says which payloads to send, in order"
        )
        return {}
    ctx, doc = load_document(session, path)
    if doc is None:
        return {}
    scan(ctx, doc)
    check_schema(ctx, doc, "upload_manifest")
    if isinstance(doc, dict) and isinstance(doc.get("modelId"), str):
        source = doc.get("source")
        if isinstance(source, str):
            check_names(ctx, doc["modelId"], source, model_where="/modelId", source_where="/source")
    save_document(ctx, path, doc)
    return doc if isinstance(doc, dict) else {}


def _payload(ctx: FileContext, doc: Any, manifest: dict[str, Any], seen: FirstSeen) -> None:
    """With ``values_checked``, the per-value checks are left out; identities, duplicates and
    the API's limits are still checked."""
    scan(ctx, doc)
    if isinstance(doc, dict):
        for key in ("modelId", "source"):
            if key in manifest and key in doc:
                _identity(ctx, key, doc[key], manifest[key])
        for k, feature in enumerate(get_list(doc, "features")):
            if isinstance(feature, dict):
                _feature(ctx, feature, k, seen)
    if not ctx.values_checked:
        check_schema(ctx, doc, "upload_batch", limits=True)


def _outlined(
    ctx: FileContext, payload: Payload, manifest: dict[str, Any], seen: FirstSeen
) -> None:
    """``_payload`` of a payload whose bytes vouch for its values and which msgspec found within
    the API's limits: the identities and duplicates, from the values they need."""
    for key, raw in (("modelId", payload.modelId), ("source", payload.source)):
        if key in manifest and raw:
            _identity(ctx, key, value(raw), manifest[key])
    for k, feature in enumerate(payload.features):
        _first_place(ctx, value(feature.index), k, seen)


def _identity(ctx: FileContext, key: str, value: Any, manifest_value: Any) -> None:
    if value != manifest_value:
        ctx.report("IDENTITY_MISMATCH", f"/{key}", f"{value!r}, manifest says {manifest_value!r}")


def _first_place(ctx: FileContext, index: Any, k: int, seen: FirstSeen) -> None:
    """Feature k's index (``index``) reported when an earlier feature had it, else kept."""
    if isinstance(index, int):
        first = seen.where(index)
        if first is not None:
            ctx.report("DUPLICATE_FEATURE", f"/features/{k}", f"feature {index} also in {first[0]}")
        seen.add(index, ctx.file)


def _feature(ctx: FileContext, f: dict[str, Any], k: int, seen: FirstSeen) -> None:
    _first_place(ctx, f.get("index"), k, seen)
    for key in ("topLogits", "bottomLogits"):
        entries = f.get(key)
        if isinstance(entries, list) and len(entries) > MAX_LOGITS:
            ctx.report(
                "LIMIT_EXCEEDED",
                f"/features/{k}/{key}",
                f"{len(entries)} items; at most {MAX_LOGITS} allowed",
                repair=_trim(f, key),
            )
    for j, e in enumerate(get_list(f, "explanations")):
        text = e.get("text") if isinstance(e, dict) else None
        if isinstance(text, str) and len(text) > MAX_EXPLANATION_CHARS:
            ctx.report(
                "LIMIT_EXCEEDED",
                f"/features/{k}/explanations/{j}/text",
                f"{len(text)} characters; at most {MAX_EXPLANATION_CHARS} allowed",
                repair=_shorten(e),
            )
    for j, a in enumerate(get_list(f, "activations")):
        base = ["features", k, "activations", j]
        if ctx.values_checked:
            if len(get_list(a, "values")) > MAX_TOKENS_PER_EXAMPLE:
                _example_limits(ctx, a, f"/features/{k}/activations/{j}")
        elif check_example(ctx, a, base) is not None:
            _example_limits(ctx, a, f"/features/{k}/activations/{j}")


def _example_limits(ctx: FileContext, a: dict[str, Any], where: str) -> None:
    values = numbers(a.get("values")) or []
    if len(values) > MAX_TOKENS_PER_EXAMPLE:

        def repair() -> str:
            centre = values.index(max(values))
            a["tokens"], a["values"], start = truncate_around(
                a["tokens"], values, centre, MAX_TOKENS_PER_EXAMPLE
            )
            return f"kept positions {start}..{start + MAX_TOKENS_PER_EXAMPLE - 1} around the max"

        ctx.report(
            "LIMIT_EXCEEDED",
            f"{where}/tokens",
            f"{len(values)} tokens; at most {MAX_TOKENS_PER_EXAMPLE} allowed",
            repair=repair,
        )
        ctx.mark_reported(f"{where}/values")
    lo, hi = get_number(a, "quantileMin"), get_number(a, "quantileMax")
    if lo is not None and hi is not None and lo > hi:
        ctx.report("INCONSISTENT", where, f"quantileMin {lo} > quantileMax {hi}")


def _trim(f: dict[str, Any], key: str) -> Any:
    def repair() -> str:
        f[key] = f[key][:MAX_LOGITS]
        return f"kept the first {MAX_LOGITS} {key}"

    return repair


def _shorten(e: dict[str, Any]) -> Any:
    def repair() -> str:
        e["text"] = e["text"][: MAX_EXPLANATION_CHARS - 1].rstrip() + "…"
        return f"cut the explanation to {MAX_EXPLANATION_CHARS} characters"

    return repair
