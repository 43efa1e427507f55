"""The export service's clients of its peers: the store (records, cache, jobs) and compute.

Every call waits for a peer that is starting or restarting (``wait_for_ready``) up to the fault
patience (``PeerWait``). Every failed call becomes the peer's domain error (``error_from_rpc``),
so an unknown SAE in the store reaches an export client as NOT_FOUND with the store's resource
details, and the orchestration code never sees grpc.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common.auth import LOOPBACK_PEER, PeerCredentials
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_codec import params_from_pb, params_to_pb
from mistudio_common.grpc_errors import call_peer, pages, stream_peer
from mistudio_common.retry import DEFAULT_PEER_WAIT, PeerWait
from mistudio_common.server import open_channel, wait_until_ready

from mistudio_export.messages import (
    computation_progress_from_pb,
    computation_request_to_pb,
    export_job_from_pb,
    iso_time,
    sae_from_pb,
    sae_reference,
    token_source_to_pb,
)
from mistudio_export.peers import (
    ComputationEstimate,
    ComputationProgress,
    ComputationRequest,
    ExportJobRecord,
    FeatureFilter,
    FeatureRecord,
    FileChunk,
    SaeRecord,
    TokenSource,
)
from mistudio_export.records import ExplanationRecord

PAGE_SIZE = 1000
HASHES_PER_REQUEST = 10_000
"""Feature hashes per put or page (about 0.8 MB): the store's limit for both."""
FETCH_BATCH = 256
"""Features per GetDashboards call: bounds the dashboards held in memory at once."""


class StoreClient:
    """Typed wrapper over StoreService for the calls the export service makes."""

    def __init__(
        self,
        address: str,
        peer: PeerCredentials = LOOPBACK_PEER,
        wait: PeerWait = DEFAULT_PEER_WAIT,
    ) -> None:
        self._channel = open_channel(address, peer)
        self._stub = sgrpc.StoreServiceStub(self._channel)
        self._unary = wait.call_options()

    def close(self) -> None:
        self._channel.close()

    def get_sae(self, sae_id: str, owner: str = "") -> SaeRecord:
        """``owner``'s SAE (ids are unique per owner); empty: the only one with this id."""
        request = spb.GetSaeRequest(sae_id=sae_id, owner=owner)
        return sae_from_pb(call_peer(lambda: self._stub.GetSae(request, **self._unary)).sae)

    def features(
        self, sae_id: str, feature_filter: FeatureFilter, owner: str = ""
    ) -> Iterator[FeatureRecord]:
        """Every feature record matching the filter, in index order."""
        wanted = spb.FeatureFilter(**asdict(feature_filter))

        def fetch(token: str) -> tuple[Sequence[spb.Feature], str]:
            request = spb.ListFeaturesRequest(
                sae_id=sae_id, owner=owner, page_size=PAGE_SIZE, page_token=token, filter=wanted
            )
            page = call_peer(lambda: self._stub.ListFeatures(request, **self._unary))
            return page.features, page.next_page_token

        return map(_feature_record, pages(fetch))

    def explanations(
        self, sae_id: str, indices: Sequence[int] = (), owner: str = ""
    ) -> Iterator[ExplanationRecord]:
        """Explanations of the listed features (all when empty), ordered as the store keeps them."""

        def fetch(token: str) -> tuple[Sequence[spb.Explanation], str]:
            request = spb.ListExplanationsRequest(
                sae_id=sae_id,
                owner=owner,
                page_size=PAGE_SIZE,
                page_token=token,
                feature_indices=indices,
            )
            page = call_peer(lambda: self._stub.ListExplanations(request, **self._unary))
            return page.explanations, page.next_page_token

        return map(_explanation_record, pages(fetch))

    def cached_hashes(
        self, sae_id: str, params: DashboardParams, owner: str = ""
    ) -> dict[int, str]:
        """Feature index -> content hash of every dashboard cached under ``params``."""
        wire = params_to_pb(params)

        def fetch(token: str) -> tuple[Sequence[spb.CachedDashboard], str]:
            request = spb.ListCachedDashboardsRequest(
                sae_id=sae_id, owner=owner, params=wire, page_size=PAGE_SIZE, page_token=token
            )
            page = call_peer(lambda: self._stub.ListCachedDashboards(request, **self._unary))
            return page.dashboards, page.next_page_token

        return {d.feature_index: d.content_hash for d in pages(fetch)}

    def dashboards(
        self, sae_id: str, params: DashboardParams, indices: Sequence[int], owner: str = ""
    ) -> tuple[list[bytes], list[int]]:
        """Cached dashboards of ``indices`` (at most a few hundred) as the store keeps them,
        and the missing indices."""
        request = spb.GetDashboardsRequest(
            sae_id=sae_id, owner=owner, params=params_to_pb(params), feature_indices=indices
        )
        found: list[bytes] = []
        missing: list[int] = []
        for message in stream_peer(lambda: self._stub.GetDashboards(request, **self._unary)):
            found.extend(d.data for d in message.serialized_dashboards)
            missing.extend(message.missing)
        return found, missing

    def create_job(self, job: spb.ExportJob) -> tuple[spb.ExportJob, bool]:
        request = spb.CreateExportJobRequest(job=job)
        response = call_peer(lambda: self._stub.CreateExportJob(request, **self._unary))
        return response.job, response.created

    def get_job(self, job_id: str) -> ExportJobRecord:
        return export_job_from_pb(self.get_job_message(job_id))

    def get_job_message(self, job_id: str) -> spb.ExportJob:
        """The whole stored record, for the job engine and the job views."""
        request = spb.GetExportJobRequest(job_id=job_id)
        return call_peer(lambda: self._stub.GetExportJob(request, **self._unary)).job

    def update_job(self, job: spb.ExportJob, fields: Iterable[str]) -> spb.ExportJob:
        request = spb.UpdateExportJobRequest(job=job, update_mask=list(fields))
        return call_peer(lambda: self._stub.UpdateExportJob(request, **self._unary)).job

    def put_outcome(self, job_id: str, outcome: jpb.ExportOutcome, output_size_bytes: int) -> None:
        job = spb.ExportJob(job_id=job_id, outcome=outcome, output_size_bytes=output_size_bytes)
        self.update_job(job, ["output_size_bytes", "outcome"])

    def claim_job(
        self, job_id: str, holder: str, lease_seconds: float
    ) -> tuple[bool, spb.ExportJob]:
        """Whether ``holder`` holds the lease now, and the job after the claim. A lease call
        does not wait for a store that is down: a claim answered after the lease it asks for
        would be void, so it fails at once and the next renewal retries."""
        request = spb.ClaimExportJobRequest(
            job_id=job_id, holder=holder, lease_seconds=lease_seconds
        )
        timeout = max(1.0, lease_seconds / 3)
        response = call_peer(lambda: self._stub.ClaimExportJob(request, timeout=timeout))
        return response.claimed, response.job

    def delete_job(self, job_id: str) -> None:
        request = spb.DeleteExportJobRequest(job_id=job_id)
        call_peer(lambda: self._stub.DeleteExportJob(request, **self._unary))

    def list_jobs(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        sae_id: str = "",
        owner: str = "",
        states: Sequence[ppb.JobState.ValueType] = (),
        sae_owner: str = "",
        finished_before: Timestamp | None = None,
    ) -> spb.ListExportJobsResponse:
        request = spb.ListExportJobsRequest(
            page_size=page_size,
            page_token=page_token,
            sae_id=sae_id,
            owner=owner,
            states=states,
            sae_owner=sae_owner,
            finished_before=finished_before,
        )
        return call_peer(lambda: self._stub.ListExportJobs(request, **self._unary))

    def finished_jobs(self, sae: SaeRecord, limit: int) -> list[ExportJobRecord]:
        """The SAE's newest ``limit`` succeeded exports, newest first (never those of another
        owner's SAE with the same id)."""
        page = self.list_jobs(
            page_size=limit,
            sae_id=sae.sae_id,
            sae_owner=sae.owner,
            states=[ppb.JOB_STATE_SUCCEEDED],
        )
        return [export_job_from_pb(job) for job in page.jobs]

    def recent_finished_jobs(self, limit: int) -> list[ExportJobRecord]:
        """The newest ``limit`` succeeded exports of any SAE: what later estimates are fitted
        over."""
        page = self.list_jobs(page_size=limit, states=[ppb.JOB_STATE_SUCCEEDED])
        return [export_job_from_pb(job) for job in page.jobs]

    def put_feature_hashes(self, job_id: str, hashes: Mapping[int, str]) -> None:
        """Records the job archive's feature hashes, in requests of bounded size."""
        items = sorted(hashes.items())
        for start in range(0, len(items), HASHES_PER_REQUEST):
            batch = items[start : start + HASHES_PER_REQUEST]
            self._put_hashes(
                spb.PutExportFeatureHashesRequest(
                    job_id=job_id,
                    hashes=[spb.FeatureHash(feature_index=i, content_hash=h) for i, h in batch],
                )
            )

    def _put_hashes(self, request: spb.PutExportFeatureHashesRequest) -> None:
        call_peer(lambda: self._stub.PutExportFeatureHashes(request, **self._unary))

    def feature_hashes(self, job_id: str) -> dict[int, str]:
        """Feature index -> content hash of every feature the job's archive holds."""

        def fetch(token: str) -> tuple[Sequence[spb.FeatureHash], str]:
            request = spb.ListExportFeatureHashesRequest(
                job_id=job_id, page_size=HASHES_PER_REQUEST, page_token=token
            )
            page = call_peer(lambda: self._stub.ListExportFeatureHashes(request, **self._unary))
            return page.hashes, page.next_page_token

        return {h.feature_index: h.content_hash for h in pages(fetch)}

    def all_jobs(
        self,
        *,
        sae_id: str = "",
        states: Sequence[ppb.JobState.ValueType] = (),
        finished_before: Timestamp | None = None,
    ) -> Iterator[spb.ExportJob]:
        def fetch(token: str) -> tuple[Sequence[spb.ExportJob], str]:
            page = self.list_jobs(
                page_size=PAGE_SIZE,
                page_token=token,
                sae_id=sae_id,
                states=states,
                finished_before=finished_before,
            )
            return page.jobs, page.next_page_token

        return pages(fetch)


def _feature_record(f: spb.Feature) -> FeatureRecord:
    return FeatureRecord(
        feature_index=f.feature_index,
        label=f.label,
        category=f.category,
        activation_frequency=f.activation_frequency,
        updated_at=iso_time(f.updated_at if f.HasField("updated_at") else None),
    )


def _explanation_record(e: spb.Explanation) -> ExplanationRecord:
    return ExplanationRecord(
        feature_index=e.feature_index,
        description=e.description,
        method=e.method,
        explainer_model=e.explainer_model,
        score=e.score if e.HasField("score") else None,
        created_at=iso_time(e.created_at if e.HasField("created_at") else None),
        explanation_id=e.explanation_id,
    )


class ComputeClient:
    """Typed wrapper over ComputeService: dashboards, estimates and SAELens files."""

    def __init__(
        self,
        address: str,
        peer: PeerCredentials = LOOPBACK_PEER,
        wait: PeerWait = DEFAULT_PEER_WAIT,
    ) -> None:
        self._channel = open_channel(address, peer)
        self._stub = cgrpc.ComputeServiceStub(self._channel)
        self._unary = wait.call_options()
        self._patience = wait.patience_seconds

    def close(self) -> None:
        self._channel.close()

    def compute_dashboards(self, request: ComputationRequest) -> ComputeStream:
        """Starts (or re-attaches to) a computation; iterate the result for its progress."""
        wait_until_ready(self._channel, self._patience, "compute service")
        message = computation_request_to_pb(request)
        return ComputeStream(self._stub.ComputeDashboards(message, wait_for_ready=True))

    def cancel_computation(self, job_id: str) -> None:
        request = cpb.CancelComputationRequest(job_id=job_id)
        call_peer(lambda: self._stub.CancelComputation(request, **self._unary))

    def pause_computation(self, job_id: str) -> None:
        """Pauses a computation, keeping its checkpoint."""
        request = cpb.PauseComputationRequest(job_id=job_id)
        call_peer(lambda: self._stub.PauseComputation(request, **self._unary))

    def validate_sae(
        self, sae: SaeRecord, tokens: TokenSource | None = None, device: str = ""
    ) -> list[str]:
        """The warnings about an SAE that loads (and runs on ``tokens``); raises when it cannot."""
        request = cpb.ValidateSaeRequest(
            sae=sae_reference(sae),
            tokens=token_source_to_pb(tokens) if tokens is not None else None,
            device=device,
        )
        return list(call_peer(lambda: self._stub.ValidateSae(request, **self._unary)).warnings)

    def estimate(
        self,
        sae: SaeRecord,
        tokens: TokenSource,
        feature_count: int,
        params: DashboardParams | None = None,
        batch_size: int = 0,
    ) -> ComputationEstimate:
        request = cpb.EstimateComputationRequest(
            sae=sae_reference(sae),
            tokens=token_source_to_pb(tokens),
            feature_count=feature_count,
            params=params_to_pb(params) if params is not None else None,
            batch_size=batch_size,
        )
        answer = call_peer(lambda: self._stub.EstimateComputation(request, **self._unary))
        return ComputationEstimate(
            params=params_from_pb(answer.params),
            n_rows=int(answer.n_rows),
            context_size=int(answer.context_size),
            prepend_bos=answer.prepend_bos,
            n_layers=int(answer.n_layers),
            estimated_seconds=answer.estimated_seconds,
            estimated_peak_memory_bytes=int(answer.estimated_peak_memory_bytes),
            rate_source=answer.rate_source,
            stage_seconds={s.stage: s.seconds for s in answer.stages},
        )

    def saelens_files(
        self, sae: SaeRecord, neuronpedia_id: str, frequencies: Sequence[float]
    ) -> Iterator[FileChunk]:
        request = cpb.ExportSaeLensFilesRequest(
            sae=sae_reference(sae),
            neuronpedia_id=neuronpedia_id,
            feature_frequencies=frequencies,
        )
        wait_until_ready(self._channel, self._patience, "compute service")
        stream = stream_peer(lambda: self._stub.ExportSaeLensFiles(request, wait_for_ready=True))
        return (FileChunk(m.file_name, m.chunk, m.last_chunk) for m in stream)


class ComputeStream:
    """A computation's progress stream that can be abandoned (pause, shutdown) without error."""

    def __init__(self, call: grpc.Future) -> None:
        self._call = call

    def __iter__(self) -> Iterator[ComputationProgress]:
        messages: Iterator[cpb.ComputeProgress] = stream_peer(lambda: iter(self._call))  # type: ignore[arg-type]
        return map(computation_progress_from_pb, messages)

    def detach(self) -> None:
        """Stops listening; the computation itself keeps running in the compute service."""
        self._call.cancel()
