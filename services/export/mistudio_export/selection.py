"""Which features an export holds: the base set, label filters, then statistic filters.

Index and label filters are answered by the store's feature records before anything is computed;
activation-frequency and max-activation filters are applied to each feature's dashboard
statistics as they are read, because those numbers are the ones the archive will show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.errors import FailedPrecondition

from mistudio_export.peers import FeatureFilter, FeatureRecord

FeatureLister = Callable[[FeatureFilter], Iterable[FeatureRecord]]
"""Lists the SAE's feature records matching a filter (the store's ListFeatures, all pages)."""


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

    def keeps(self, dashboard: dpb.FeatureDashboard) -> bool:
        stats = dashboard.statistics
        if stats.activation_frequency < self.min_frequency:
            return False
        if self.max_frequency and stats.activation_frequency > self.max_frequency:
            return False
        return stats.max_activation >= self.min_max_activation


def statistic_filter(selection: epb.FeatureSelection) -> StatisticFilter:
    return StatisticFilter(
        min_frequency=selection.min_frequency,
        max_frequency=selection.max_frequency,
        min_max_activation=selection.min_max_activation,
    )


def has_label_filters(selection: epb.FeatureSelection) -> bool:
    return bool(selection.labeled_only or selection.label_contains or selection.category)


def most_selected(selection: epb.FeatureSelection, d_sae: int) -> int:
    """How many features ``selection`` can match at most, without asking the store."""
    which = selection.WhichOneof("base")
    if which == "range":
        return max(0, min(selection.range.end, d_sae) - max(selection.range.start, 0))
    if which == "list":
        return len(set(selection.list.indices))
    return d_sae


def candidate_indices(
    selection: epb.FeatureSelection, d_sae: int, list_features: FeatureLister
) -> list[int]:
    """Sorted indices matching the base set and the label filters (before statistics)."""
    which = selection.WhichOneof("base")
    if which == "range":
        base = range(selection.range.start, selection.range.end)
        wanted: set[int] | None = None
    elif which == "list":
        wanted = set(selection.list.indices)
        base = range(min(wanted), max(wanted) + 1)
    else:
        base, wanted = range(d_sae), None
    if not has_label_filters(selection):
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
    selection: epb.FeatureSelection, d_sae: int, list_features: FeatureLister
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
