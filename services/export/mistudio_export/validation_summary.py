"""The validator's findings as a job's outcome and ValidateArchive report them, in plain values:
``checking`` produces them, ``messages`` turns them into the recorded ``ValidationSummary`` and
the response's ``ValidationProblem``s."""

from __future__ import annotations

from dataclasses import dataclass

from mistudio_export.validation import Severity

REPORTED = frozenset({Severity.ERROR, Severity.WARNING})
"""The severities a summary counts and a response lists (INFO findings are the report's own)."""


@dataclass(frozen=True)
class ProblemClass:
    """How often one problem code was found, and what fixes it."""

    code: str
    count: int
    suggested_fix: str


@dataclass(frozen=True)
class ValidationSummary:
    valid: bool
    files_checked: int = 0
    error_count: int = 0
    warning_count: int = 0
    classes: tuple[ProblemClass, ...] = ()
    fixes_applied: tuple[str, ...] = ()
    """One line per repair auto-fix made."""

    def plus(self, other: ValidationSummary) -> ValidationSummary:
        """Both checks' findings: valid only when both are, their classes in order."""
        return ValidationSummary(
            valid=self.valid and other.valid,
            files_checked=self.files_checked + other.files_checked,
            error_count=self.error_count + other.error_count,
            warning_count=self.warning_count + other.warning_count,
            classes=self.classes + other.classes,
            fixes_applied=self.fixes_applied + other.fixes_applied,
        )


@dataclass(frozen=True)
class ValidationProblem:
    severity: Severity
    """ERROR or WARNING (``REPORTED``)."""
    code: str
    file: str
    message: str
    pointer: str = ""
