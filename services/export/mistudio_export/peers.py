"""What the pipeline's stages need of their peers, as small protocols.

The gRPC clients in ``clients`` and the object stores satisfy them; a stage's unit tests pass
an in-memory double instead, so each stage is tested without servers and the adapters are
tested once. Each protocol names only what its stages call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.store.v1 import store_service_pb2 as spb

from mistudio_export.object_store import ObjectInfo, ProgressCallback


class ComputationStream(Protocol):
    """A computation's progress messages; ``detach`` stops listening, not the computation."""

    def __iter__(self) -> Iterator[cpb.ComputeProgress]: ...

    def detach(self) -> None: ...


class DashboardComputer(Protocol):
    """The compute service as the compute stage sees it."""

    def compute_dashboards(self, request: cpb.ComputeDashboardsRequest) -> ComputationStream: ...

    def pause_computation(self, job_id: str) -> ppb.JobState.ValueType: ...

    def cancel_computation(self, job_id: str) -> None: ...


class TokenEstimates(Protocol):
    """The compute service's facts about a token source (rows, context, the resolved params)."""

    def estimate(
        self,
        sae: spb.Sae,
        tokens: tpb.TokenSource,
        feature_count: int,
        params: dpb.DashboardParams | None = None,
    ) -> cpb.EstimateComputationResponse: ...


class SaeLensFiles(Protocol):
    """The compute service as the SAELens writer sees it: the weights files, in chunks."""

    def saelens_files(
        self, sae: spb.Sae, neuronpedia_id: str, frequencies: Sequence[float]
    ) -> Iterator[cpb.ExportSaeLensFilesResponse]: ...


class SaeValidation(Protocol):
    """The compute service's check that an SAE loads (and runs on the token source)."""

    def validate_sae(
        self, sae: spb.Sae, tokens: tpb.TokenSource | None = None, device: str = ""
    ) -> cpb.ValidateSaeResponse: ...


class PlanningCompute(SaeValidation, TokenEstimates, Protocol):
    """What the checks before a job exists ask of the compute service."""


class ExportCompute(DashboardComputer, TokenEstimates, SaeLensFiles, Protocol):
    """Everything a running export asks of the compute service."""


class FeatureFacts(Protocol):
    """The store's feature records and explanations, as the file writers read them."""

    def features(
        self, sae_id: str, feature_filter: spb.FeatureFilter, owner: str = ""
    ) -> Iterator[spb.Feature]: ...

    def explanations(
        self, sae_id: str, indices: Sequence[int] = (), owner: str = ""
    ) -> Iterator[spb.Explanation]: ...


class FeatureRecords(FeatureFacts, Protocol):
    """The store as the collect stage sees it: cached dashboards and what people wrote."""

    def dashboards(
        self, sae_id: str, params: dpb.DashboardParams, indices: Sequence[int], owner: str = ""
    ) -> tuple[list[dpb.FeatureDashboard], list[int]]: ...


class FeatureHashRecords(Protocol):
    """The content hashes of the features an export's archive holds, kept beside its record."""

    def put_feature_hashes(self, job_id: str, hashes: Mapping[int, str]) -> None: ...

    def feature_hashes(self, job_id: str) -> dict[int, str]: ...


class JobLookup(Protocol):
    """One export job record, as the downloads read it."""

    def get_job(self, job_id: str) -> spb.ExportJob: ...


class PlanningStore(JobLookup, FeatureFacts, Protocol):
    """What the checks before a job exists read from the store: the SAE, features, a base job."""

    def get_sae(self, sae_id: str, owner: str = "") -> spb.Sae: ...


class JobRecords(JobLookup, Protocol):
    """Export job records read and rewritten, as the archive checks use them."""

    def update_job(self, job: spb.ExportJob, fields: Sequence[str]) -> spb.ExportJob: ...


class ExportRecords(JobRecords, FeatureHashRecords, Protocol):
    """The store's export job records, as the pipeline uses them."""

    def finished_jobs(self, sae: spb.Sae, limit: int) -> list[spb.ExportJob]: ...


class EstimateRecords(Protocol):
    """What an estimate reads from the store: which dashboards are cached, and what finished
    exports measured."""

    def cached_hashes(
        self, sae_id: str, params: dpb.DashboardParams, owner: str = ""
    ) -> dict[int, str]: ...

    def recent_finished_jobs(self, limit: int) -> list[spb.ExportJob]: ...


class ExportStore(FeatureRecords, ExportRecords, EstimateRecords, Protocol):
    """Everything the pipeline asks of the store once a job exists."""


class ArchiveUpload(Protocol):
    """The object store as the publish stage sees it."""

    def put_file(
        self, key: str, path: Path, *, progress: ProgressCallback | None = None
    ) -> ObjectInfo: ...
