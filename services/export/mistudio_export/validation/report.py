"""The validation report: problems and repairs, as data (JSON) and as a readable summary."""

from __future__ import annotations

import enum
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson


class Severity(enum.Enum):
    ERROR = "error"
    """Neuronpedia or a reader would reject or misdisplay the data."""
    WARNING = "warning"
    """Accepted, but probably not what was meant."""
    INFO = "info"


@dataclass(frozen=True, slots=True)
class ProblemClass:
    code: str
    severity: Severity
    title: str
    fix: str
    fixable: bool = False
    """Whether ``validate_export(fix=True)`` repairs at least the common cases."""


_E, _W, _I = Severity.ERROR, Severity.WARNING, Severity.INFO
_CLASSES = (
    ProblemClass("FILE_UNREADABLE", _E, "File cannot be read (bad or truncated gzip, I/O error)",
                 "re-export the file; a truncated gzip usually means the export was interrupted"),
    ProblemClass("INVALID_UTF8", _E, "File is not valid UTF-8",
                 "re-export with decoded token strings; auto-fix substitutes U+FFFD", True),
    ProblemClass("INVALID_JSON", _E, "Not parseable as JSON",
                 "re-export; a hand-edited file must stay valid JSON"),
    ProblemClass("FILE_TOO_LARGE", _E, "File larger than the validator reads",
                 "export in smaller batches; the limits are in mistudio_export.limits"),
    ProblemClass("ARCHIVE_LIMIT", _E, "Archive expands beyond the limits (size, entries, ratio)",
                 "nothing was extracted; re-export, or check where the archive came from"),
    ProblemClass("UNSAFE_PATH", _E, "Entry or link that points outside the export",
                 "left unread and unwritten; remove links and absolute or '..' names"),
    ProblemClass("MISSING_FIELD", _E, "Required field missing",
                 "re-export with the current writer; required fields are in the schema"),
    ProblemClass("WRONG_TYPE", _E, "Value of the wrong JSON type",
                 "write numbers as numbers, token lists as lists of strings"),
    ProblemClass("SCHEMA_VIOLATION", _E, "Value outside what the schema allows",
                 "see the message; the schema files sit next to the format modules"),
    ProblemClass("LIMIT_EXCEEDED", _E, "Over a Neuronpedia upload API limit",
                 "rewrite the payloads with write_upload_payloads (it splits and truncates); "
                 "auto-fix trims logits, explanations and long examples", True),
    ProblemClass("EMPTY_ARRAY", _E, "Empty array where data is required",
                 "recompute the dashboard; only dead features may lack examples and histograms"),
    ProblemClass("FEW_EXAMPLES", _W, "Fewer activation examples than the PRD's minimum of 10",
                 "raise n_top_examples or sample more prompts"),
    ProblemClass("NON_FINITE", _E, "NaN or Infinity",
                 "recompute the value; auto-fix writes 0 and lists each replacement", True),
    ProblemClass("TOKEN_ENCODING", _W, "Token text that will not display or store correctly",
                 "decode tokens with the tokenizer's byte decoder; auto-fix replaces lone "
                 "surrogates with U+FFFD and control characters with <0xNN>", True),
    ProblemClass("LENGTH_MISMATCH", _E, "Parallel arrays of different lengths",
                 "tokens/values (and str/values) must have one entry per position"),
    ProblemClass("MAX_VALUE_MISMATCH", _E, "Stored maximum differs from max(values)",
                 "auto-fix recomputes it from values", True),
    ProblemClass("MIN_VALUE_MISMATCH", _E, "Stored minimum differs from min(values)",
                 "auto-fix recomputes it from values", True),
    ProblemClass("MAX_INDEX_MISMATCH", _E, "Max token index does not point at the maximum",
                 "auto-fix points it at the first maximum", True),
    ProblemClass("STATS_MAX_MISMATCH", _E, "Examples and statistics disagree on the maximum",
                 "auto-fix raises max_activation to the examples' maximum", True),
    ProblemClass("HISTOGRAM_TOTAL_MISMATCH", _E, "Histogram counts do not add up to the total",
                 "auto-fix recomputes the stored total from the counts", True),
    ProblemClass("HISTOGRAM_EDGES", _E, "Histogram bins malformed (order or count)",
                 "n bins need n+1 non-decreasing edges (or n increasing centres)"),
    ProblemClass("INDEX_FILE_MISMATCH", _E, "Feature index differs from the file name",
                 "rename the file or correct feature_index; check which one is right"),
    ProblemClass("DUPLICATE_FEATURE", _E, "Same feature index more than once",
                 "export each feature once"),
    ProblemClass("DUPLICATE_ID", _E, "Row id used twice (the importer keeps only the first)",
                 "derive ids from feature, section and position, as the writer does"),
    ProblemClass("KEY_SET_MISMATCH", _E, "Line keys differ from the file's first line",
                 "the importer takes its columns from line 1: give every line the same keys; "
                 "auto-fix adds missing columns that have a database default", True),
    ProblemClass("NOT_NULL_MISSING", _E, "NOT NULL column missing or null",
                 "fill modelId, layer, index and the table's other NOT NULL columns"),
    ProblemClass("UNKNOWN_COLUMN", _W, "Key is not a column; the importer drops it silently",
                 "check the spelling against the column list (camelCase vs snake_case)"),
    ProblemClass("IDENTITY_MISMATCH", _E, "Row belongs to another model or source than its folder",
                 "rows in {modelId}/{sourceId}/ must carry that modelId and layer"),
    ProblemClass("ORPHAN_ROW", _E, "Row refers to a feature that has no Neuron row",
                 "export the feature too, or drop the row (foreign key to Neuron)"),
    ProblemClass("NAMING", _E, "Model, source or source-set name breaks Neuronpedia's rules",
                 "lowercase letters, digits and '-'; source id '{layer}-{set}'"),
    ProblemClass("UNKNOWN_EXPLANATION_TYPE", _E,
                 "Explanation type or explainer model Neuronpedia lacks: the file fails to import",
                 "map it to a Neuronpedia type (e.g. np_max-act-logits) or move the rows to "
                 "explanations-pending/ and ask Neuronpedia's maintainers to add it"),
    ProblemClass("EMPTY_MODEL_NAME", _E, "explanationModelName '' breaks the foreign key",
                 "write null where no model wrote the explanation; auto-fix does", True),
    ProblemClass("HIDDEN_ACTIVATIONS", _W, "Activations by a creator Neuronpedia does not show",
                 "use the public bot user clkht01d40000jv08hvalcvly as creatorId"),
    ProblemClass("COUNT_MISMATCH", _E, "Metadata count differs from the files present",
                 "re-export; a missing file usually means an interrupted write"),
    ProblemClass("MISSING_FILE", _E, "Expected file missing", "re-export the missing file"),
    ProblemClass("UNEXPECTED_FILE", _W, "File the format does not define",
                 "remove it, or rename it to the format's pattern"),
    ProblemClass("INCONSISTENT", _W, "Values that contradict each other",
                 "see the message; usually a sign of mixing outputs of two runs"),
    ProblemClass("NOTHING_FOUND", _W, "No export format recognised in the folder",
                 "point the validator at the export folder"),
)  # fmt: skip
PROBLEM_CLASSES: dict[str, ProblemClass] = {c.code: c for c in _CLASSES}


@dataclass(frozen=True, slots=True)
class Problem:
    severity: Severity
    code: str
    file: str
    """Path relative to the validated folder, with '/' separators."""
    pointer: str
    """JSON pointer inside the document (inside the line, for JSON Lines)."""
    message: str
    line: int | None = None
    """1-based line of a JSON Lines file."""
    fixable: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.value
        return data


@dataclass(frozen=True, slots=True)
class Change:
    """One repair made by auto-fix."""

    code: str
    file: str
    pointer: str
    description: str
    line: int | None = None


@dataclass
class ValidationReport:
    root: str
    components: list[str] = field(default_factory=list)
    """What was recognised, e.g. 'prd: .', 'neuronpedia-importer: np/gpt2-small/6-res'."""
    files_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity is Severity.ERROR for p in self.problems)

    def count(self, severity: Severity) -> int:
        return sum(p.severity is severity for p in self.problems)

    def codes(self) -> set[str]:
        return {p.code for p in self.problems}

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "components": self.components,
            "files_checked": self.files_checked,
            "counts": {s.value: self.count(s) for s in Severity},
            "problems": [p.to_dict() for p in self.problems],
            "changes": [asdict(c) for c in self.changes],
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    def summary(self, examples_per_class: int = 3) -> str:
        """Problems grouped by class, worst first, each class with its fix and a few examples."""
        head = (
            f"{'OK' if self.ok else 'FAILED'}: {self.files_checked} files in {self.root}; "
            f"{self.count(Severity.ERROR)} errors, {self.count(Severity.WARNING)} warnings"
        )
        lines = [head]
        if self.changes:
            lines.append(f"auto-fix made {len(self.changes)} changes")
        groups: dict[str, list[Problem]] = defaultdict(list)
        for p in self.problems:
            groups[p.code].append(p)
        order = sorted(groups, key=lambda c: (_rank(groups[c]), c))
        for code in order:
            items = groups[code]
            cls = PROBLEM_CLASSES[code]
            files = len({p.file for p in items})
            lines.append(f"\n[{items[0].severity.value}] {code}: {cls.title}")
            lines.append(f"  {len(items)} in {files} file(s); fix: {cls.fix}")
            for p in items[:examples_per_class]:
                where = (
                    p.file
                    + (f":{p.line}" if p.line else "")
                    + (f" {p.pointer}" if p.pointer else "")
                )
                lines.append(f"  - {where}: {p.message}")
            if len(items) > examples_per_class:
                lines.append(f"  … and {len(items) - examples_per_class} more")
        return "\n".join(lines)


def _rank(items: list[Problem]) -> int:
    return min(list(Severity).index(p.severity) for p in items)
