"""Validating a ZIP archive that may be hostile: limits first, then a confined extraction, then
the integrity check against its manifest and the format checks, all as one report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mistudio_export.packaging.archive import VerifyReport, verify_archive
from mistudio_export.packaging.safe_extract import safe_extract
from mistudio_export.validation.report import PROBLEM_CLASSES, Problem, ValidationReport
from mistudio_export.validation.validator import validate_export


@dataclass(frozen=True)
class ArchiveValidation:
    report: ValidationReport
    integrity: VerifyReport
    """Empty when a limit or damage kept the archive from being extracted (the report says
    why)."""
    unreadable: str = ""
    """Why the file is no ZIP archive at all ("" when it is one)."""


def validate_zip(zip_path: Path, folder: Path, *, fix: bool = False) -> ArchiveValidation:
    """Extracts ``zip_path`` into ``folder`` (which it creates) and validates what it holds."""
    extraction = safe_extract(zip_path, folder)
    if not extraction.ok:
        code = "FILE_UNREADABLE" if extraction.unreadable else "ARCHIVE_LIMIT"
        report = ValidationReport(
            root=str(zip_path), problems=[_problem(code, zip_path.name, extraction.refused)]
        )
        unreadable = extraction.refused if extraction.unreadable else ""
        return ArchiveValidation(report, VerifyReport(), unreadable)
    integrity = verify_archive(zip_path)
    report = validate_export(folder, fix=fix)
    skipped = [_problem("UNSAFE_PATH", name, reason) for name, reason in extraction.skipped]
    report.problems[:0] = skipped
    return ArchiveValidation(report, integrity)


def _problem(code: str, file: str, message: str) -> Problem:
    return Problem(PROBLEM_CLASSES[code].severity, code, file, "", message)
