"""The archive's own files (``manifest.json``, ``README.md``, ``prefill.json`` at its root).

They belong to no export format. The packaging manifest shares its name with the upload-payloads
manifest, so it is told apart by its ``archive_format_version`` key; here it is only checked to
list files that are present (checksums are the archive integrity check's job, and a repair
changes them).
"""

from __future__ import annotations

import json
from pathlib import Path

from mistudio_common.errors import InvalidArgument

from mistudio_export.packaging.manifest import MANIFEST_NAME, Manifest
from mistudio_export.packaging.readme import PREFILL_NAME, README_NAME
from mistudio_export.validation.context import Session, read_text

PACKAGING_FILES = (MANIFEST_NAME, README_NAME, PREFILL_NAME)
_VERSION_KEY = "archive_format_version"
_MAX_MANIFEST_BYTES = 64 << 20
"""Far above a real manifest (about 100 bytes per file); only to tell the two manifests apart."""


def is_packaging_manifest(path: Path) -> bool:
    """True for the archive manifest written by packaging, not an upload-payloads manifest."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_MANIFEST_BYTES:
        return False
    try:
        body = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(body, dict) and _VERSION_KEY in body


def is_packaging_dir(directory: Path) -> bool:
    return is_packaging_manifest(directory / MANIFEST_NAME)


def validate_packaging(session: Session, directory: Path) -> None:
    path = directory / MANIFEST_NAME
    ctx = session.context(path)
    text = read_text(ctx, path)
    if text is None:
        return
    try:
        manifest = Manifest.from_json(text.encode("utf-8"))
    except InvalidArgument as exc:
        ctx.report("SCHEMA_VIOLATION", "", exc.message)
        return
    for i, entry in enumerate(manifest.files):
        if entry.path not in PACKAGING_FILES and not (directory / entry.path).is_file():
            ctx.report("MISSING_FILE", f"/files/{i}", f"{entry.path} is listed but missing")
