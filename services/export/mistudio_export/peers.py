"""What the pipeline's stages need of their peers, as small protocols, and the plain values
they exchange.

The gRPC clients in ``clients`` and the object stores satisfy them, translating messages to
these values (``messages``); a stage's unit tests pass an in-memory double instead, so each stage
is tested without servers and the adapters are tested once. Each protocol names only what its
stages call. Messages cross only where they are the job's own typed record (its config,
progress, checkpoint and outcome) or the cached data product: a ``FeatureDashboard`` is kept as
the store serves it, since turning one into dataclasses costs about 13 times its parsing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import MistudioError
from mistudio_common.progress import TERMINAL_STATES

from mistudio_export.object_store import ObjectInfo, ProgressCallback
from mistudio_export.packaging import ExportFormat
from mistudio_export.records import ExplanationRecord


@dataclass(frozen=True, slots=True)
class TokenSource:
    """The tokens a computation reads: a token file or plain-text files (neither: unset)."""

    token_file: str = ""
    text_paths: tuple[str, ...] | None = None
    """None: not a text source (a text source without paths is refused by the plan)."""
    dataset_name: str = ""
    context_size: int = 0
    """Tokens per row; 0: the file's width, or compute's default."""
    prepend_bos: bool | None = None
    """None: ``dashboard_options.DEFAULT_PREPEND_BOS``."""
    max_tokens: int = 0
    """0: every token."""

    @property
    def given(self) -> bool:
        return bool(self.token_file) or self.text_paths is not None


RECORDED_TOKENS_KEY = "token_source"
"""Key of the SAE record's config under which a default token source (TokenSource JSON) lives."""


@dataclass(frozen=True, slots=True)
class SaeRecord:
    """An SAE as the store registered it, with what the export reads of it."""

    sae_id: str
    owner: str = ""
    model_id: str = ""
    hook_point: str = ""
    d_in: int = 0
    d_sae: int = 0
    architecture: str = "standard"
    """The SAELens name: standard, jumprelu, topk or gated."""
    weights_uri: str = ""
    training_dataset: str = ""
    n_training_tokens: int = 0
    l0: float = 0.0
    explained_variance: float = 0.0
    neuronpedia_model_id: str = ""
    neuronpedia_source_set: str = ""
    created_at: str = ""
    """ISO-8601; empty: unknown."""
    recorded_tokens: TokenSource | None = None
    """The token source recorded in the SAE's config, used when a request gives none."""


@dataclass(frozen=True, slots=True)
class ComputationRequest:
    """What to compute: the dashboards of ``feature_indices`` (empty: every feature)."""

    request_id: str
    """Idempotency key: the same id re-attaches to the computation it started."""
    sae: SaeRecord
    params: DashboardParams
    tokens: TokenSource | None
    feature_indices: tuple[int, ...] = ()
    batch_size: int = 0
    device: str = ""
    reuse_cached: bool = True


@dataclass(frozen=True, slots=True)
class ComputationProgress:
    """One progress event of a computation; the last carries its result or error."""

    computation_id: str
    state: ppb.JobState.ValueType
    stage: ppb.Stage.ValueType = ppb.STAGE_UNSPECIFIED
    items_done: int = 0
    items_total: int = 0
    unit: str = ""
    message: str = ""
    error: MistudioError | None = None
    """Why a failed computation failed, when compute said."""
    result: cpb.ComputeResult | None = None
    """Set on success; kept as the message the job's typed checkpoint stores."""

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class ExportJobRecord:
    """An export job as the stages read it from the store. Its configuration, progress and
    outcome stay the job's own typed messages (the engine writes them; the store keeps them)."""

    job_id: str
    sae_id: str
    sae_owner: str
    owner: str
    state: ppb.JobState.ValueType
    config: epb.ExportConfig
    formats: frozenset[ExportFormat]
    """What the config asks to write, as a delta export checks of its base."""
    progress: ppb.Progress
    outcome: jpb.ExportOutcome | None = None
    """Set once the job finished."""
    output_uri: str = ""
    output_size_bytes: int = 0

    @property
    def result(self) -> epb.ExportResult | None:
        """What a succeeded job produced, as its outcome records it."""
        has = self.outcome is not None and self.outcome.HasField("result")
        return self.outcome.result if has and self.outcome is not None else None


@dataclass(frozen=True, slots=True)
class FeatureFilter:
    """Which feature records to list; the defaults match every feature."""

    index_start: int = 0
    index_end: int = 0
    """Half-open [index_start, index_end); 0: no upper bound."""
    labeled_only: bool = False
    label_contains: str = ""
    """Case-insensitive substring of the label."""
    category: str = ""


@dataclass(frozen=True, slots=True)
class FeatureRecord:
    """A feature as the store keeps it: what people wrote about it and its frequency."""

    feature_index: int
    label: str = ""
    category: str = ""
    activation_frequency: float = 0.0
    updated_at: str = ""
    """ISO-8601; when the record was last written (empty: unknown)."""


@dataclass(frozen=True, slots=True)
class ComputationEstimate:
    """The compute service's facts about a token source and the cost of a computation."""

    params: DashboardParams
    """The requested params as dashboards are cached under (fingerprint filled in)."""
    n_rows: int
    context_size: int
    prepend_bos: bool
    n_layers: int
    estimated_seconds: float = 0.0
    estimated_peak_memory_bytes: int = 0
    rate_source: str = ""
    """Where the compute rate behind ``estimated_seconds`` came from."""
    stage_seconds: Mapping[ppb.Stage.ValueType, float] = field(default_factory=dict)
    """``estimated_seconds`` per stage of the computation."""


@dataclass(frozen=True, slots=True)
class FileChunk:
    """A piece of one file the compute service streams; ``last`` ends that file."""

    file_name: str
    data: bytes
    last: bool = False


class ComputationStream(Protocol):
    """A computation's progress messages; ``detach`` stops listening, not the computation."""

    def __iter__(self) -> Iterator[ComputationProgress]: ...

    def detach(self) -> None: ...


class DashboardComputer(Protocol):
    """The compute service as the compute stage sees it."""

    def compute_dashboards(self, request: ComputationRequest) -> ComputationStream: ...

    def pause_computation(self, job_id: str) -> None: ...

    def cancel_computation(self, job_id: str) -> None: ...


class TokenEstimates(Protocol):
    """The compute service's facts about a token source (rows, context, the resolved params)."""

    def estimate(
        self,
        sae: SaeRecord,
        tokens: TokenSource,
        feature_count: int,
        params: DashboardParams | None = None,
        batch_size: int = 0,
    ) -> ComputationEstimate: ...


class SaeLensFiles(Protocol):
    """The compute service as the SAELens writer sees it: the weights files, in chunks."""

    def saelens_files(
        self, sae: SaeRecord, neuronpedia_id: str, frequencies: Sequence[float]
    ) -> Iterator[FileChunk]: ...


class SaeValidation(Protocol):
    """The compute service's check that an SAE loads (and runs on the token source): raises
    when it cannot, returns the warnings when it can."""

    def validate_sae(
        self, sae: SaeRecord, tokens: TokenSource | None = None, device: str = ""
    ) -> list[str]: ...


class PlanningCompute(SaeValidation, TokenEstimates, Protocol):
    """What the checks before a job exists ask of the compute service."""


class ExportCompute(DashboardComputer, TokenEstimates, SaeLensFiles, Protocol):
    """Everything a running export asks of the compute service."""


class FeatureFacts(Protocol):
    """The store's feature records and explanations, as the file writers read them."""

    def features(
        self, sae_id: str, feature_filter: FeatureFilter, owner: str = ""
    ) -> Iterator[FeatureRecord]: ...

    def explanations(
        self, sae_id: str, indices: Sequence[int] = (), owner: str = ""
    ) -> Iterator[ExplanationRecord]: ...


class DashboardCache(Protocol):
    """The store's cached dashboards."""

    def dashboards(
        self, sae_id: str, params: DashboardParams, indices: Sequence[int], owner: str = ""
    ) -> tuple[list[bytes], list[int]]:
        """The cached dashboards of ``indices`` as the bytes the store keeps (a
        ``FeatureDashboard``'s deterministic serialisation), and the missing indices."""
        ...


class FeatureRecords(FeatureFacts, DashboardCache, Protocol):
    """The store as the collect stage sees it: cached dashboards and what people wrote."""


class FeatureHashRecords(Protocol):
    """The content hashes of the features an export's archive holds, kept beside its record."""

    def put_feature_hashes(self, job_id: str, hashes: Mapping[int, str]) -> None: ...

    def feature_hashes(self, job_id: str) -> dict[int, str]: ...


class JobLookup(Protocol):
    """One export job record, as the downloads read it."""

    def get_job(self, job_id: str) -> ExportJobRecord: ...


class PlanningStore(JobLookup, FeatureFacts, Protocol):
    """What the checks before a job exists read from the store: the SAE, features, a base job."""

    def get_sae(self, sae_id: str, owner: str = "") -> SaeRecord: ...


class JobRecords(JobLookup, Protocol):
    """Export job records read and rewritten, as the archive checks use them."""

    def put_outcome(self, job_id: str, outcome: jpb.ExportOutcome, output_size_bytes: int) -> None:
        """Rewrites a finished job's outcome and archive size (after a repair)."""


class ExportRecords(JobRecords, FeatureHashRecords, Protocol):
    """The store's export job records, as the pipeline uses them."""

    def finished_jobs(self, sae: SaeRecord, limit: int) -> list[ExportJobRecord]: ...


class EstimateRecords(Protocol):
    """What an estimate reads from the store: which dashboards are cached, and what finished
    exports measured."""

    def cached_hashes(
        self, sae_id: str, params: DashboardParams, owner: str = ""
    ) -> dict[int, str]: ...

    def recent_finished_jobs(self, limit: int) -> list[ExportJobRecord]: ...


class EstimateStore(EstimateRecords, FeatureFacts, Protocol):
    """What ValidateExport reads from the store besides the plan's checks: the feature records
    a selection matches, cached dashboards and measured exports."""


class ExportStore(FeatureRecords, ExportRecords, EstimateRecords, Protocol):
    """Everything the pipeline asks of the store once a job exists."""


class ArchiveUpload(Protocol):
    """The object store as the publish stage sees it."""

    def put_file(
        self, key: str, path: Path, *, progress: ProgressCallback | None = None
    ) -> ObjectInfo: ...
