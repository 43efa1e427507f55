"""In-memory stand-ins for the store, compute and the object store: what the stages' unit tests
run against instead of servers. Each keeps what it was given, so a test can read it back."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_codec import dashboard_bytes, params_to_pb
from mistudio_common.errors import NotFound
from mistudio_export.messages import FORMAT_TO_PB
from mistudio_export.object_store import ChunkStream, ObjectInfo, PresignedUrl, ProgressCallback
from mistudio_export.packaging import EVERY_FORMAT, ExportFormat
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


class MemoryStore:
    """The store's records for one SAE: features, explanations, cached dashboards, jobs and
    the feature hashes of finished archives."""

    def __init__(self, sae: SaeRecord, dashboards: Sequence[dpb.FeatureDashboard]) -> None:
        self.sae = sae
        self.cached = {d.feature_index: d for d in dashboards}
        self.records = {
            d.feature_index: FeatureRecord(feature_index=d.feature_index) for d in dashboards
        }
        self.jobs: dict[str, ExportJobRecord] = {}
        self.hashes: dict[str, dict[int, str]] = {}

    def get_sae(self, sae_id: str, owner: str = "") -> SaeRecord:
        return self.sae

    def features(
        self, sae_id: str, feature_filter: FeatureFilter, owner: str = ""
    ) -> Iterator[FeatureRecord]:
        for index in sorted(self.records):
            feature = self.records[index]
            if feature_filter.labeled_only and not feature.label:
                continue
            yield feature

    def explanations(
        self, sae_id: str, indices: Sequence[int] = (), owner: str = ""
    ) -> Iterator[ExplanationRecord]:
        return iter([])

    def dashboards(
        self, sae_id: str, params: DashboardParams, indices: Sequence[int], owner: str = ""
    ) -> tuple[list[bytes], list[int]]:
        found = [dashboard_bytes(self.cached[i]) for i in indices if i in self.cached]
        return found, [i for i in indices if i not in self.cached]

    def get_job(self, job_id: str) -> ExportJobRecord:
        if job_id not in self.jobs:
            raise NotFound(f"no export job {job_id!r}", resource_name=job_id)
        return self.jobs[job_id]

    def put_outcome(self, job_id: str, outcome: jpb.ExportOutcome, output_size_bytes: int) -> None:
        stored = self.jobs[job_id]
        self.jobs[job_id] = replace(stored, outcome=outcome, output_size_bytes=output_size_bytes)

    def finished_jobs(self, sae: SaeRecord, limit: int) -> list[ExportJobRecord]:
        done = [j for j in self.jobs.values() if j.state == ppb.JOB_STATE_SUCCEEDED]
        return list(reversed(done))[:limit]

    def recent_finished_jobs(self, limit: int) -> list[ExportJobRecord]:
        return self.finished_jobs(self.sae, limit)

    def cached_hashes(
        self, sae_id: str, params: DashboardParams, owner: str = ""
    ) -> dict[int, str]:
        return {
            i: hashlib.sha256(d.SerializeToString(deterministic=True)).hexdigest()
            for i, d in self.cached.items()
        }

    def put_feature_hashes(self, job_id: str, hashes: Mapping[int, str]) -> None:
        self.hashes.setdefault(job_id, {}).update(hashes)

    def feature_hashes(self, job_id: str) -> dict[int, str]:
        return dict(self.hashes.get(job_id, {}))


def job_record(
    job_id: str,
    formats: Iterable[ExportFormat] = (),
    state: ppb.JobState.ValueType = ppb.JOB_STATE_RUNNING,
) -> ExportJobRecord:
    """A job of the SAE the stage tests export ("tiny"), as the store would hold it."""
    return ExportJobRecord(
        job_id=job_id,
        sae_id="tiny",
        sae_owner="",
        owner="alice",
        state=state,
        config=epb.ExportConfig(formats=[FORMAT_TO_PB[f] for f in formats]),
        formats=frozenset(formats) or EVERY_FORMAT,
        progress=ppb.Progress(job_id=job_id, state=state),
    )


class MemoryCompute:
    """A compute service whose dashboards are already cached: every computation succeeds at
    once, computing nothing."""

    def __init__(self, saelens_files: Mapping[str, bytes] | None = None) -> None:
        self.saelens = dict(saelens_files or {})
        self.computations: list[ComputationRequest] = []
        self.seconds_per_feature: dict[ppb.Stage.ValueType, float] = {}
        """What its estimates predict per stage, per feature to compute."""
        self.estimated_batch_sizes: list[int] = []
        """The batch size each estimate was asked at."""

    def compute_dashboards(self, request: ComputationRequest) -> FinishedComputation:
        self.computations.append(request)
        return FinishedComputation(request)

    def pause_computation(self, job_id: str) -> None:
        pass

    def cancel_computation(self, job_id: str) -> None:
        pass

    def validate_sae(
        self, sae: SaeRecord, tokens: TokenSource | None = None, device: str = ""
    ) -> list[str]:
        return []

    def estimate(
        self,
        sae: SaeRecord,
        tokens: TokenSource,
        feature_count: int,
        params: DashboardParams | None = None,
        batch_size: int = 0,
    ) -> ComputationEstimate:
        self.estimated_batch_sizes.append(batch_size)
        seconds = {stage: rate * feature_count for stage, rate in self.seconds_per_feature.items()}
        return ComputationEstimate(
            params=params or DashboardParams(),
            n_rows=10,
            context_size=8,
            prepend_bos=True,
            n_layers=2,
            estimated_seconds=sum(seconds.values()),
            stage_seconds=seconds,
        )

    def saelens_files(
        self, sae: SaeRecord, neuronpedia_id: str, frequencies: Sequence[float]
    ) -> Iterator[FileChunk]:
        for name, content in self.saelens.items():
            half = len(content) // 2
            yield FileChunk(name, content[:half])
            yield FileChunk(name, content[half:], last=True)


class FinishedComputation:
    def __init__(self, request: ComputationRequest) -> None:
        self._request = request

    def __iter__(self) -> Iterator[ComputationProgress]:
        result = cpb.ComputeResult(features_reused=4, params=params_to_pb(self._request.params))
        yield ComputationProgress("computation-1", ppb.JOB_STATE_SUCCEEDED, result=result)

    def detach(self) -> None:
        pass


class MemoryObjects:
    """An object store in a dict."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_file(
        self, key: str, path: Path, *, progress: ProgressCallback | None = None
    ) -> ObjectInfo:
        self.objects[key] = path.read_bytes()
        return self.stat(key)

    def get_range(
        self, key: str, offset: int = 0, length: int | None = None, *, chunk_size: int = 1 << 20
    ) -> ChunkStream:
        data = self.objects[key][offset : None if length is None else offset + length]
        chunks = (data[i : i + chunk_size] for i in range(0, len(data), chunk_size))
        return ChunkStream(iter(chunks), lambda: None)

    def stat(self, key: str) -> ObjectInfo:
        data = self.objects[key]
        return ObjectInfo(key, len(data), hashlib.md5(data).hexdigest())

    def exists(self, key: str) -> bool:
        return key in self.objects

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def presigned_get_url(self, key: str, expiry_seconds: int) -> PresignedUrl:
        expires = datetime.now(UTC) + timedelta(seconds=expiry_seconds)
        return PresignedUrl(f"memory://{key}", expires)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter([self.stat(k) for k in sorted(self.objects) if k.startswith(prefix)])

    def remove_unfinished(self, before: float) -> int:
        return 0  # a dict's write is never left half done
