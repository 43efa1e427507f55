"""Validation of export folders: JSON schemas plus semantic checks, a report, opt-in repairs.

report = validate_export(Path("export"), fix=False)
print(report.summary()); report.to_json()
"""

from mistudio_export.validation.report import (
    PROBLEM_CLASSES,
    Change,
    Problem,
    ProblemClass,
    Severity,
    ValidationReport,
)
from mistudio_export.validation.validator import validate_export

__all__ = [
    "PROBLEM_CLASSES",
    "Change",
    "Problem",
    "ProblemClass",
    "Severity",
    "ValidationReport",
    "validate_export",
]
