"""Which features an export holds: the base set, label filters, then statistic filters.

Index and label filters are answered by the store's feature records before anything is computed;
activation-frequency and max-activation filters are applied to each feature's dashboard
statistics as they are read, because those numbers are the ones the archive will show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from mistudio_common.errors import FailedPrecondition

from mistudio_export.peers import FeatureFilter, FeatureRecord

FeatureLister = Callable[[FeatureFilter], Iterable[FeatureRecord]]
"""Lists the SAE's feature records matching a filter (the store's ListFeatures, all pages)."""


class _Statistics(Protocol):
    @property
    def activation_frequency(self) -> float: ...
    @property
    def max_activation(self) -> float: ...


class _HasStatistics(Protocol):
    @property
    def statistics(self) -> _Statistics: ...


@dataclass(frozen=True)
class StatisticFilter:
    """Keeps features whose dashboard statistics fall inside the requested bounds."""

    min_frequency: float = 0.0
    max_frequency: float = 0.0
    """0 means no upper bound."""
    min_max_activation: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.min_frequency or self.max_frequency or self.min_max_activation)

    def keeps(self, dashboard: _HasStatistics) -> bool:
        stats = dashboard.statistics
        if stats.activation_frequency < self.min_frequency:
            return False
        if self.max_frequency and stats.activation_frequency > self.max_frequency:
            return False
        return stats.max_activation >= self.min_max_activation


@dataclass(frozen=True)
class FeatureSelection:
    """Which features an export holds (the request's ``config.selection``, checked)."""

    base: range | frozenset[int] | None = None
    """A range of indices, the listed indices, or None for every feature."""
    labeled_only: bool = False
    label_contains: str = ""
    category: str = ""
    statistics: StatisticFilter = field(default_factory=StatisticFilter)

    @property
    def label_filtered(self) -> bool:
        return bool(self.labeled_only or self.label_contains or self.category)


def most_selected(selection: FeatureSelection, d_sae: int) -> int:
    """How many features ``selection`` can match at most, without asking the store."""
    base = selection.base
    if isinstance(base, range):
        return max(0, min(base.stop, d_sae) - max(base.start, 0))
    if base is not None:
        return len(base)
    return d_sae


def candidate_indices(
    selection: FeatureSelection, d_sae: int, list_features: FeatureLister
) -> list[int]:
    """Sorted indices matching the base set and the label filters (before statistics)."""
    wanted: frozenset[int] | None = None
    if isinstance(selection.base, range):
        base = selection.base
    elif selection.base is not None:
        wanted = selection.base
        base = range(min(wanted), max(wanted) + 1)
    else:
        base = range(d_sae)
    if not selection.label_filtered:
        return sorted(wanted) if wanted is not None else list(base)
    record_filter = FeatureFilter(
        index_start=base.start,
        index_end=base.stop,
        labeled_only=selection.labeled_only,
        label_contains=selection.label_contains,
        category=selection.category,
    )
    found = (f.feature_index for f in list_features(record_filter))
    return sorted(i for i in found if (wanted is None or i in wanted) and i in base)


def require_candidates(
    selection: FeatureSelection, d_sae: int, list_features: FeatureLister
) -> list[int]:
    """:func:`candidate_indices`, refusing a selection that matches no feature."""
    candidates = candidate_indices(selection, d_sae, list_features)
    if not candidates:
        raise FailedPrecondition(
            "the feature selection matches no feature",
            violations=[("config.selection", "no feature record matches the label filters")],
            field="config.selection",
            fix="label features first, or loosen labeled_only / label_contains / category",
        )
    return candidates
