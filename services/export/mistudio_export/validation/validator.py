"""Validate an export folder holding any subset of the formats, optionally repairing it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mistudio_common.errors import NotFound
from mistudio_common.gc_pause import collector_paused

from mistudio_export.validation import layout
from mistudio_export.validation.context import Session, relative
from mistudio_export.validation.importer_checks import validate_importer
from mistudio_export.validation.packaging_checks import validate_packaging
from mistudio_export.validation.prd_checks import validate_prd
from mistudio_export.validation.report import ValidationReport
from mistudio_export.validation.saedashboard_checks import validate_saedashboard
from mistudio_export.validation.upload_checks import validate_upload
from mistudio_export.worker_pool import WorkerPool

_CHECKERS: dict[str, Callable[[Session, Path], None]] = {
    layout.IMPORTER: validate_importer,
    layout.PRD: validate_prd,
    layout.SAEDASHBOARD: validate_saedashboard,
    layout.UPLOAD: validate_upload,
    layout.PACKAGING: validate_packaging,
}
"""Heaviest first (a 4096-feature export: 1.57, 0.92, 0.83, 0.79 and 0.03 CPU s), the order in
which ``_check_all`` hands components to processes."""


@dataclass(frozen=True, slots=True)
class Checked:
    """What the column checks vouch for (see ``validate_export``)."""

    columns: bool
    walk_features: frozenset[int]


PARALLEL_MIN_BYTES = 64 * 1024 * 1024
"""Below this much data a second process costs more to start than it saves."""


def validate_export(
    root: Path,
    *,
    fix: bool = False,
    pool: WorkerPool | None = None,
    columns_checked: bool = False,
    walk_features: frozenset[int] = frozenset(),
) -> ValidationReport:
    """Check every file of every recognised format under ``root`` (gzip included).

    With ``fix``, common problems are repaired in the files and listed in ``report.changes``;
    ``report.problems`` then holds only what is left. With a ``pool`` of 2 or more workers a
    large export's formats are checked side by side, in this process and the pool's; the
    report is the same as when checked one by one.

    ``columns_checked``: only for an export's own files, written from column batches in which
    ``column_checks`` found nothing. Files whose bytes then prove strict, clean JSON (gzip
    intact, one orjson parse) skip the per-value checks; the checks across rows and files, and
    every check of any other file, still run; so does every check of the PRD files of
    ``walk_features``. Archives from elsewhere are checked in full.
    """
    if not root.is_dir():
        raise NotFound(
            f"{root} is not a folder",
            resource_type="export folder",
            resource_name=str(root),
            fix="pass the folder the export was written to",
        )
    components = layout.discover(root)
    if components:
        checked = Checked(columns_checked, walk_features)
        parts = _check_all(root, fix, components, pool, checked)
    else:
        session = Session(root=root, fix=fix)
        session.context(root, reading=False).report(
            "NOTHING_FOUND", "", "no metadata.json, batch files, row files or payloads found"
        )
        parts = [session]
    return ValidationReport(
        root=str(root),
        components=[f"{c.kind}: {relative(root, c.path) or '.'}" for c in components],
        files_checked=sum(s.files_checked for s in parts),
        problems=[p for s in parts for p in s.problems],
        changes=[c for s in parts for c in s.changes],
    )


def _check_all(
    root: Path,
    fix: bool,
    components: list[layout.Component],
    pool: WorkerPool | None,
    checked: Checked,
) -> list[Session]:
    n = min(pool.workers, len(components)) if pool else 1
    if pool is None or n < 2 or _size(root) < PARALLEL_MIN_BYTES:
        return [_check_component(root, fix, c, checked) for c in components]
    # n - 1 of the pool's processes take the heaviest components, one each, while this process
    # checks the rest: the importer's rows stay out of this one's memory
    kinds = list(_CHECKERS)
    order = sorted(range(len(components)), key=lambda i: kinds.index(components[i].kind))
    away, here = order[: n - 1], order[n - 1 :]
    with pool.lease() as lease:
        futures = {
            i: lease.submit(_check_component, root, fix, components[i], checked) for i in away
        }
        sessions = {i: _check_component(root, fix, components[i], checked) for i in here}
        sessions.update({i: future.result() for i, future in futures.items()})
    return [sessions[i] for i in range(len(components))]


def _check_component(
    root: Path, fix: bool, component: layout.Component, checked: Checked
) -> Session:
    session = Session(
        root=root,
        fix=fix,
        columns_checked=checked.columns,
        walk_features=checked.walk_features,
    )
    with collector_paused():
        _CHECKERS[component.kind](session, component.path)
    return session


def _size(folder: str | Path) -> int:
    """Bytes of the files under ``folder``, links not followed; read entry by entry (a list of
    the names in features/ alone grows with d_sae)."""
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                total += _size(entry.path)
            else:
                total += entry.stat(follow_symlinks=False).st_size
    return total
