"""VALIDATING_OUTPUT, and ValidateArchive: the validator's report as the API's summary (in plain
values, ``validation_summary``; ``messages`` turns them into the recorded ones).

During an export the staged files are validated (and repaired when auto-fix is on) before they
are packed. A finished archive can be validated again later; with auto-fix its repairs are
packed into a new archive that replaces the old one under the same key.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio_common.errors import FailedPrecondition

from mistudio_export.downloads import fetch_to_file, finished_job
from mistudio_export.generate import FOLDERS, features_to_walk
from mistudio_export.messages import validation_summary_from_pb, validation_summary_to_pb
from mistudio_export.object_store import ObjectStore
from mistudio_export.packaging import (
    MANIFEST_NAME,
    Compression,
    FormatKind,
    VerifyReport,
    build_archive,
)
from mistudio_export.peers import ExportJobRecord, JobRecords
from mistudio_export.runtime import JobRuntime
from mistudio_export.validation import PROBLEM_CLASSES, Severity, ValidationReport, validate_export
from mistudio_export.validation.archives import validate_zip
from mistudio_export.validation_summary import (
    REPORTED,
    ProblemClass,
    ValidationProblem,
    ValidationSummary,
)

SAELENS_REQUIRED = ("cfg.json", "sae_weights.safetensors")
DEFAULT_MAX_PROBLEMS = 1000
MAX_FIX_LINES = 100


def summary_of(report: ValidationReport) -> ValidationSummary:
    counts = Counter(p.code for p in report.problems if p.severity in REPORTED)
    return ValidationSummary(
        valid=report.ok,
        files_checked=report.files_checked,
        error_count=report.count(Severity.ERROR),
        warning_count=report.count(Severity.WARNING),
        classes=_classes(counts),
        fixes_applied=tuple(_fix_lines(report)),
    )


def _classes(counts: Counter[str]) -> tuple[ProblemClass, ...]:
    return tuple(
        ProblemClass(code=code, count=n, suggested_fix=PROBLEM_CLASSES[code].fix)
        for code, n in sorted(counts.items())
    )


def _fix_lines(report: ValidationReport) -> list[str]:
    """One line per repair, at most MAX_FIX_LINES; a last line says how many more there were."""
    lines = [
        f"{c.file}{':' + str(c.line) if c.line else ''} {c.pointer}: {c.description}"
        for c in report.changes[:MAX_FIX_LINES]
    ]
    if len(report.changes) > MAX_FIX_LINES:
        lines.append(f"... and {len(report.changes) - MAX_FIX_LINES} more repairs")
    return lines


def problems_of(report: ValidationReport, limit: int) -> list[ValidationProblem]:
    return [
        ValidationProblem(
            severity=p.severity,
            code=p.code,
            file=p.file,
            pointer=p.pointer,
            message=p.message + (f" (line {p.line})" if p.line else ""),
        )
        for p in [p for p in report.problems if p.severity in REPORTED][:limit]
    ]


def validate_output(
    job: JobRuntime, root: Path, kinds: Sequence[FormatKind], auto_fix: bool
) -> ValidationSummary:
    """Validates the staged files once; a job that failed validation fails with the report.

    Files written from column batches the column checks found clean get a structural check
    of their bytes instead of the per-value walk (``validate_export(columns_checked=True)``);
    the PRD files of features with PRD-only findings still get it."""
    if job.checkpoint.HasField("validation"):
        return validation_summary_from_pb(job.checkpoint.validation)
    job.report(ppb.STAGE_VALIDATING_OUTPUT, 0, 1, "folders", "validating the generated files")
    summary = ValidationSummary(valid=True)
    if any(kind is not FormatKind.SAELENS for kind in kinds):
        walk = features_to_walk(job.staging)
        report = validate_export(
            root,
            fix=auto_fix,
            pool=job.workers,
            columns_checked=walk is not None,
            walk_features=walk or frozenset(),
        )
        summary = summary_of(report)
    if FormatKind.SAELENS in kinds:
        summary = summary.plus(_check_saelens(root / FOLDERS[FormatKind.SAELENS]))
    if not summary.valid:
        raise FailedPrecondition(
            f"the generated files fail validation: {summary.error_count} errors "
            f"({', '.join(c.code for c in summary.classes)})",
            violations=[(c.code, f"{c.count}x; {c.suggested_fix}") for c in summary.classes],
            field="config.auto_fix",
            fix="export again with config.auto_fix=true to repair what can be repaired",
        )
    job.finish_stage(ppb.STAGE_VALIDATING_OUTPUT)
    job.checkpoint.validation.CopyFrom(validation_summary_to_pb(summary))
    job.save()
    return summary


def _check_saelens(folder: Path) -> ValidationSummary:
    """SAELens loads a folder only with both files; the weights themselves come from compute."""
    missing = [name for name in SAELENS_REQUIRED if not (folder / name).is_file()]
    if not missing:
        return ValidationSummary(valid=True, files_checked=len(SAELENS_REQUIRED))
    return ValidationSummary(
        valid=False,
        files_checked=len(SAELENS_REQUIRED),
        error_count=len(missing),
        classes=(
            ProblemClass(
                code="MISSING_FILE",
                count=len(missing),
                suggested_fix=f"saelens/{', '.join(missing)} missing: resume the export",
            ),
        ),
    )


@dataclass(frozen=True)
class ArchiveCheck:
    """ValidateArchive's answer."""

    summary: ValidationSummary
    problems: list[ValidationProblem]


class ArchiveValidator:
    """ValidateArchive: re-checks a finished export's archive, optionally repairing it."""

    def __init__(self, store: JobRecords, objects: ObjectStore) -> None:
        self._store = store
        self._objects = objects

    def validate(self, job_id: str, auto_fix: bool, max_problems: int = 0) -> ArchiveCheck:
        """The finished job's archive checked (and, with ``auto_fix``, repaired and published
        again); ``max_problems`` 0 lists up to DEFAULT_MAX_PROBLEMS."""
        job = finished_job(self._store, job_id)
        limit = max_problems or DEFAULT_MAX_PROBLEMS
        with tempfile.TemporaryDirectory(prefix="mistudio-validate-") as scratch:
            folder = Path(scratch) / "archive"
            archive = fetch_to_file(self._objects, job.output_uri, Path(scratch) / "archive.zip")
            checked = validate_zip(archive, folder, fix=auto_fix)
            report, integrity = checked.report, checked.integrity
            summary = summary_of(report)
            if (folder / FOLDERS[FormatKind.SAELENS]).is_dir():
                summary = summary.plus(_check_saelens(folder / FOLDERS[FormatKind.SAELENS]))
            found = _integrity(integrity)
            summary = summary.plus(_summary_of_integrity(found))
            problems = problems_of(report, limit) + found
            if report.changes:
                with zipfile.ZipFile(archive) as zf:
                    compression = _compression_of(zf)
                self._republish(job, folder, Path(scratch) / "fixed.zip", compression, summary)
        return ArchiveCheck(summary, problems[:limit])

    def _republish(
        self,
        job: ExportJobRecord,
        folder: Path,
        path: Path,
        compression: Compression,
        summary: ValidationSummary,
    ) -> None:
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        fixed = build_archive(folder, path, compression=compression)
        self._objects.put_file(job.output_uri, fixed.path)
        outcome = jpb.ExportOutcome()
        if job.outcome is not None:
            outcome.CopyFrom(job.outcome)
        result = outcome.result
        if not result.output_uri:
            result.output_uri = job.output_uri
        result.size_bytes = fixed.size
        result.archive_sha256 = fixed.sha256
        result.validation.CopyFrom(validation_summary_to_pb(summary))
        self._store.put_outcome(job.job_id, outcome, fixed.size)


def _integrity(report: VerifyReport) -> list[ValidationProblem]:
    """The archive against its manifest, as validation problems."""
    found = [
        *(("FILE_UNREADABLE", MANIFEST_NAME, report.unreadable) for _ in [1] if report.unreadable),
        *(("MISSING_FILE", path, "listed in the manifest, absent") for path in report.missing),
        *(("FILE_UNREADABLE", c.path, c.reason) for c in report.corrupt),
    ]
    problems = [
        ValidationProblem(severity=Severity.ERROR, code=code, file=file, message=text)
        for code, file, text in found
    ]
    problems += [
        ValidationProblem(
            severity=Severity.WARNING,
            code="UNEXPECTED_FILE",
            file=path,
            message="not listed in the manifest",
        )
        for path in report.extra
    ]
    return problems


def _summary_of_integrity(problems: Sequence[ValidationProblem]) -> ValidationSummary:
    errors = sum(p.severity is Severity.ERROR for p in problems)
    return ValidationSummary(
        valid=not errors,
        error_count=errors,
        warning_count=len(problems) - errors,
        classes=_classes(Counter(p.code for p in problems)),
    )


def _compression_of(zf: zipfile.ZipFile) -> Compression:
    deflated = any(info.compress_type == zipfile.ZIP_DEFLATED for info in zf.infolist())
    return Compression.DEFLATED if deflated else Compression.STORED
