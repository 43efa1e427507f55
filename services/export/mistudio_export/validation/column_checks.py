"""The validator's per-value checks, run on a column batch before its files are written.

An export's writers render every format from the same ``ExampleColumns``, so what the validator
would find in a value of a written file (a stored maximum that is not the maximum, token and
value lists of different lengths, a negative count, unordered bins) can be found once, in bulk,
on the batch. A finding names the problem code and the place in the feature's PRD document that
the validator would report. An export whose batches have no finding needs only a structural
check of its bytes (``validate_export(columns_checked=True)``); one with findings gets the full
check, which reports (and with auto-fix repairs) every problem in every file.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from mistudio_common.dashboard import FeatureDashboard, Histogram, TokenAggregate

from mistudio_export.formats.columns import TOP_SECTION, ExampleColumns
from mistudio_export.formats.jsonio import pointer
from mistudio_export.validation.checks import ABS_TOL, REL_TOL
from mistudio_export.validation.prd_checks import PRD_MIN_EXAMPLES
from mistudio_export.validation.schema_rules import rule_findings

BIN_SLACK = 1e-5
"""As the PRD check: a quantile example needs a value within this of its bin."""


@dataclass(frozen=True, slots=True)
class ColumnFinding:
    """A problem the validator would report in the files written from a batch."""

    code: str
    feature_index: int
    pointer: str
    """Where it sits in the feature's PRD document (features/{feature_index}.json)."""
    message: str

    @property
    def prd_only(self) -> bool:
        """Only the PRD feature file's check reports it (the other formats carry no such
        field): the feature's PRD file gets the full check, the other files need not."""
        return self.code in _PRD_ONLY_CODES or (
            self.code == "INCONSISTENT" and self.pointer.startswith(_PRD_ONLY_PLACES)
        )


_PRD_ONLY_CODES = frozenset({"FEW_EXAMPLES", "STATS_MAX_MISMATCH", "HISTOGRAM_TOTAL_MISMATCH"})
_PRD_ONLY_PLACES = ("/statistics/dead_feature", "/logits/")


def features_to_walk(findings: Sequence[ColumnFinding]) -> frozenset[int] | None:
    """The features whose PRD files need the full check; None when a finding is one that the
    checks of other formats report too (then every file needs it)."""
    if not all(f.prd_only for f in findings):
        return None
    return frozenset(f.feature_index for f in findings)


def column_findings(columns: ExampleColumns) -> list[ColumnFinding]:
    """Every finding of ``columns``: its example rows checked as arrays, its dashboards'
    statistics, histograms, logits and bins one dashboard at a time (a few dozen numbers each).
    The schema's own rules (bounds, enums, types) come from ``schema_rules``."""
    found = [ColumnFinding(*broken) for broken in rule_findings(columns)]
    found += _row_findings(columns)
    peaks = _peaks_per_dashboard(columns)
    for position, dashboard in enumerate(columns.dashboards):
        found += _dashboard_findings(dashboard, *peaks[position])
    return found


def _close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """math.isclose with the validator's tolerances, elementwise."""
    return np.abs(a - b) <= np.maximum(REL_TOL * np.maximum(np.abs(a), np.abs(b)), ABS_TOL)


def _row_findings(c: ExampleColumns) -> Iterator[ColumnFinding]:
    n_tokens, n_ids, n_values = np.diff(c.token_start), np.diff(c.id_start), c.n_values
    bad_length = (n_tokens != n_values) | (n_ids != n_values)
    empty = ~bad_length & (n_values == 0)
    usable = np.flatnonzero(~bad_length & ~empty)
    top, first_top, _ = c.value_peaks(usable)
    stored_max = c.max_value[usable]
    bad_max = ~_close(stored_max, top)
    index = c.max_token_index[usable]
    inside = (index >= 0) & (index < n_values[usable])
    at_index = c.values[c.value_start[usable] + np.where(inside, index, 0)]
    bad_index = ~inside | ~_close(at_index, top)
    q = c.qualifying_token_index[usable]
    bad_qualifying = (q < 0) | (q >= n_values[usable])
    yield from _rows(c, np.flatnonzero(bad_length), "LENGTH_MISMATCH", lambda r: "", _lengths)
    yield from _rows(c, np.flatnonzero(empty), "EMPTY_ARRAY", lambda r: "/values", _no_values)
    for rows, code, where in (
        (usable[bad_max], "MAX_VALUE_MISMATCH", "/max_value"),
        (usable[bad_index], "MAX_INDEX_MISMATCH", "/max_token_index"),
        (usable[bad_qualifying], "SCHEMA_VIOLATION", "/qualifying_token_index"),
    ):
        yield from _rows(c, rows, code, lambda r, w=where: w, _stored)  # type: ignore[misc]
    yield from _outside_bins(c, usable, top, first_top)


Say = Callable[[ExampleColumns, int], str]
Finding = Callable[[str, str, str], None]
"""Records a finding of one dashboard: (code, pointer, message)."""


def _rows(
    c: ExampleColumns, rows: np.ndarray, code: str, where: Callable[[int], str], say: Say
) -> Iterator[ColumnFinding]:
    for row in rows.tolist():
        yield ColumnFinding(
            code, _feature(c, row), pointer(c.pointer(row)) + where(row), say(c, row)
        )


def _feature(c: ExampleColumns, row: int) -> int:
    return int(c.dashboards[int(c.position[row])].feature_index)


def _lengths(c: ExampleColumns, row: int) -> str:
    tokens = int(c.token_start[row + 1] - c.token_start[row])
    values = int(c.value_start[row + 1] - c.value_start[row])
    ids = int(c.id_start[row + 1] - c.id_start[row])
    return f"array lengths differ: tokens={tokens}, values={values}, token_ids={ids}"


def _no_values(c: ExampleColumns, row: int) -> str:
    return "example has no values"


def _stored(c: ExampleColumns, row: int) -> str:
    return (
        f"max_value={c.max_value[row]}, max_token_index={c.max_token_index[row]}, "
        f"qualifying_token_index={c.qualifying_token_index[row]} disagree with its values"
    )


def _outside_bins(
    c: ExampleColumns, usable: np.ndarray, top: np.ndarray, first_top: np.ndarray
) -> Iterator[ColumnFinding]:
    """A quantile example must have a value in its bin, and its qualifying token must lie in
    it (the PRD's and SAEDashboard's INCONSISTENT)."""
    grouped = usable[c.section[usable] != TOP_SECTION]
    if not len(grouped):
        return
    bins = c.section_bins(grouped, top[c.section[usable] != TOP_SECTION])
    lo, hi = bins[:, 0], bins[:, 1]
    starts, stops = c.value_start[grouped], c.value_start[grouped + 1]
    lengths = stops - starts
    owner = np.repeat(np.arange(len(grouped)), lengths)
    gathered_at = np.cumsum(lengths) - lengths  # of each row's first value among ``values``
    values = c.values[np.repeat(starts - gathered_at, lengths) + np.arange(len(owner))]
    inside = (values >= lo[owner] - BIN_SLACK) & (values <= hi[owner] + BIN_SLACK)
    any_inside = np.zeros(len(grouped), bool)
    np.logical_or.at(any_inside, owner, inside)
    q = c.values[starts + np.clip(c.qualifying_token_index[grouped], 0, lengths - 1)]
    q_inside = ((q >= lo) & (q <= hi)) | _close(q, lo) | _close(q, hi)
    for k in np.flatnonzero(~any_inside | ~q_inside).tolist():
        row = int(grouped[k])
        yield ColumnFinding(
            "INCONSISTENT",
            _feature(c, row),
            pointer(c.pointer(row)),
            f"the example's values miss its bin [{lo[k]}, {hi[k]}]",
        )


def _peaks_per_dashboard(c: ExampleColumns) -> list[tuple[list[float], list[float]]]:
    """Per dashboard: the peaks of its top examples and of its quantile examples."""
    usable = np.flatnonzero(c.n_values > 0)
    top, _, _ = c.value_peaks(usable)
    peaks: list[tuple[list[float], list[float]]] = [([], []) for _ in c.dashboards]
    for position, section, peak in zip(
        c.position[usable].tolist(), c.section[usable].tolist(), top.tolist(), strict=True
    ):
        peaks[position][section != TOP_SECTION].append(peak)
    return peaks


def _dashboard_findings(
    d: FeatureDashboard, top: Sequence[float], grouped: Sequence[float]
) -> list[ColumnFinding]:
    found: list[ColumnFinding] = []

    def finding(code: str, where: str, message: str) -> None:
        found.append(ColumnFinding(code, d.feature_index, where, message))

    s = d.statistics
    for name, value in (
        ("activation_frequency", s.activation_frequency),
        ("max_activation", s.max_activation),
        ("mean_activation", s.mean_activation),
        ("std_activation", s.std_activation),
        ("l0_contribution", s.l0_contribution),
        ("quantile_relative_error", s.quantile_relative_error),
        *((f"quantiles/{level}", q) for level, q in s.quantiles.items()),
    ):
        if not math.isfinite(value):
            finding("NON_FINITE", f"/statistics/{name}", f"{value} is not a finite number")
    _histogram(finding, d.activation_histogram, "histogram", s.nonzero_count)
    _histogram(finding, d.logit_histogram, "logit_histogram", None)
    for key, entries, sign in (
        ("top_positive", d.top_positive_logits, -1),
        ("top_negative", d.top_negative_logits, 1),
    ):
        values = [e.value for e in entries]
        if not all(map(math.isfinite, values)):
            finding("NON_FINITE", f"/logits/{key}", "a logit value is not finite")
        elif any(sign * (b - a) < 0 for a, b in itertools.pairwise(values)):
            finding("INCONSISTENT", f"/logits/{key}", f"{key} is not sorted by value")
    for g, group in enumerate(d.quantile_groups):
        bounds = (group.bin_min, group.bin_max, group.bin_contains)
        if not all(map(math.isfinite, bounds)):
            finding("NON_FINITE", f"/quantile_groups/{g}", "a bin bound is not finite")
        elif group.bin_min > group.bin_max:
            finding("INCONSISTENT", f"/quantile_groups/{g}", f"bin {bounds} is malformed")
    if any(not math.isfinite(x) for t in d.top_tokens for x in _aggregates(t)):
        finding("NON_FINITE", "/top_tokens", "a token aggregate is not finite")
    _examples(finding, d, top, grouped)
    return found


def _aggregates(t: TokenAggregate) -> tuple[float, float, float]:
    return (t.total_activation, t.mean_activation, t.max_activation)


def _histogram(finding: Finding, h: Histogram, key: str, nonzero: int | None) -> None:
    edges, counts = h.bin_edges, h.counts
    if not all(map(math.isfinite, edges)):
        finding("NON_FINITE", f"/{key}/bin_edges", "a bin edge is not finite")
        return
    if (edges or counts) and len(edges) != len(counts) + 1:
        finding("HISTOGRAM_EDGES", f"/{key}/bin_edges", f"{len(counts)} counts need one edge more")
    if any(b < a for a, b in itertools.pairwise(edges)):
        finding("HISTOGRAM_EDGES", f"/{key}/bin_edges", "bin edges decrease")
    elif any(c <= a for a, c in zip(edges, edges[2:], strict=False)):
        # SAEDashboard and the importer write bin centres, which must increase strictly
        finding("HISTOGRAM_EDGES", f"/{key}/bin_edges", "two bins share a centre")
    if counts or edges:
        total = sum(counts)
        stored = h.nonzero_count if nonzero is not None else h.total_count
        if total != stored or (nonzero is not None and total != nonzero):
            finding("HISTOGRAM_TOTAL_MISMATCH", f"/{key}/counts", f"counts sum to {total}")


def _examples(
    finding: Finding, d: FeatureDashboard, top: Sequence[float], grouped: Sequence[float]
) -> None:
    """The PRD's statistics-against-examples checks (and its warnings)."""
    s = d.statistics
    n_examples = len(top) + len(grouped)
    if s.dead_feature and (n_examples or s.activation_frequency > 0):
        finding("INCONSISTENT", "/statistics/dead_feature", "dead, yet it has activations")
    if not s.dead_feature and n_examples < PRD_MIN_EXAMPLES:
        finding("FEW_EXAMPLES", "/activations", f"{n_examples} examples, PRD minimum 10")
    if n_examples and math.isfinite(s.max_activation):
        highest, smax = max([*top, *grouped]), s.max_activation
        above = highest > smax and not _near(highest, smax)
        if above or (top and not _near(max(top), smax)):
            finding("STATS_MAX_MISMATCH", "/statistics/max_activation", f"{highest} vs {smax}")


def _near(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
