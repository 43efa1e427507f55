"""What the pipeline's stages need of their peers, as small protocols.

The gRPC clients in ``clients`` satisfy them; a stage's unit tests pass an in-memory double
instead, so each stage is tested without servers and the adapters are tested once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.store.v1 import store_service_pb2 as spb


class ComputationStream(Protocol):
    """A computation's progress messages; ``detach`` stops listening, not the computation."""

    def __iter__(self) -> Iterator[cpb.ComputeProgress]: ...

    def detach(self) -> None: ...


class DashboardComputer(Protocol):
    """The compute service as the compute stage sees it."""

    def compute_dashboards(self, request: cpb.ComputeDashboardsRequest) -> ComputationStream: ...

    def pause_computation(self, job_id: str) -> ppb.JobState.ValueType: ...

    def cancel_computation(self, job_id: str) -> None: ...


class FeatureRecords(Protocol):
    """The store as the collect stage sees it: cached dashboards and what people wrote."""

    def dashboards(
        self, sae_id: str, params: dpb.DashboardParams, indices: Sequence[int]
    ) -> tuple[list[dpb.FeatureDashboard], list[int]]: ...

    def features(self, sae_id: str, feature_filter: spb.FeatureFilter) -> Iterator[spb.Feature]: ...

    def explanations(
        self, sae_id: str, indices: Sequence[int] = ()
    ) -> Iterator[spb.Explanation]: ...
