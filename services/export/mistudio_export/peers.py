"""What the pipeline's stages need of their peers, as small protocols.

The gRPC clients in ``clients`` satisfy them; a stage's unit tests pass an in-memory double
instead, so each stage is tested without servers and the adapters are tested once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb


class ComputationStream(Protocol):
    """A computation's progress messages; ``detach`` stops listening, not the computation."""

    def __iter__(self) -> Iterator[cpb.ComputeProgress]: ...

    def detach(self) -> None: ...


class DashboardComputer(Protocol):
    """The compute service as the compute stage sees it."""

    def compute_dashboards(self, request: cpb.ComputeDashboardsRequest) -> ComputationStream: ...

    def pause_computation(self, job_id: str) -> ppb.JobState.ValueType: ...

    def cancel_computation(self, job_id: str) -> None: ...
