"""Validate an export folder holding any subset of the formats, optionally repairing it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mistudio_common.errors import NotFound

from mistudio_export.validation import layout
from mistudio_export.validation.context import Session, relative
from mistudio_export.validation.importer_checks import validate_importer
from mistudio_export.validation.packaging_checks import validate_packaging
from mistudio_export.validation.prd_checks import validate_prd
from mistudio_export.validation.report import ValidationReport
from mistudio_export.validation.saedashboard_checks import validate_saedashboard
from mistudio_export.validation.upload_checks import validate_upload

_CHECKERS: dict[str, Callable[[Session, Path], None]] = {
    layout.PRD: validate_prd,
    layout.IMPORTER: validate_importer,
    layout.SAEDASHBOARD: validate_saedashboard,
    layout.UPLOAD: validate_upload,
    layout.PACKAGING: validate_packaging,
}


def validate_export(root: Path, *, fix: bool = False) -> ValidationReport:
    """Check every file of every recognised format under ``root`` (gzip included).

    With ``fix``, common problems are repaired in the files and listed in ``report.changes``;
    ``report.problems`` then holds only what is left.
    """
    if not root.is_dir():
        raise NotFound(
            f"{root} is not a folder",
            resource_type="export folder",
            resource_name=str(root),
            fix="pass the folder the export was written to",
        )
    session = Session(root=root, fix=fix)
    components = layout.discover(root)
    if not components:
        session.context(root, reading=False).report(
            "NOTHING_FOUND", "", "no metadata.json, batch files, row files or payloads found"
        )
    for component in components:
        _CHECKERS[component.kind](session, component.path)
    return ValidationReport(
        root=str(root),
        components=[f"{c.kind}: {relative(root, c.path) or '.'}" for c in components],
        files_checked=session.files_checked,
        problems=session.problems,
        changes=session.changes,
    )
