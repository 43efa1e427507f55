"""Export jobs as the job engine stores them: records in the store service.

Progress is written often, the resume state only at checkpoints, and a finished job's typed
outcome with the fields ListExports shows. Leases, and the stops other instances ask of a job's
holder, let several export instances share one store.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import timestamp_pb2
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.jobs.control import StopReason
from mistudio_common.jobs.store import Claim, JobRecord, JobUpdate

from mistudio_export.clients import StoreClient

ExportRecord = JobRecord[jpb.ExportCheckpoint, jpb.ExportOutcome]
ExportUpdate = JobUpdate[jpb.ExportCheckpoint, jpb.ExportOutcome]


_REQUESTS = {
    ppb.JOB_STATE_PAUSED: StopReason.PAUSE,
    ppb.JOB_STATE_CANCELLED: StopReason.CANCEL,
}
"""The stops another instance may ask of a job's holder, by the state they end in."""


def requested_of(stored: spb.ExportJob) -> StopReason | None:
    return _REQUESTS.get(stored.requested_state)


def record_of(stored: spb.ExportJob) -> ExportRecord:
    return JobRecord(
        job_id=stored.job_id,
        state=stored.state,
        progress=stored.progress,
        checkpoint=stored.resume,
        outcome=stored.outcome if stored.HasField("outcome") else None,
        started=stored.HasField("started_at"),
        requested=requested_of(stored),
    )


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


class StoreJobStore:
    """The JobStore of export jobs, over the store service."""

    def __init__(self, store: StoreClient) -> None:
        self._store = store

    def load(self, job_id: str) -> ExportRecord:
        return record_of(self._store.get_job_message(job_id))

    def write(self, job_id: str, update: ExportUpdate) -> StopReason | None:
        job = spb.ExportJob(job_id=job_id, state=update.state, progress=update.progress)
        fields = ["state", "progress"]
        if update.checkpoint is not None:
            if update.checkpoint.ByteSize():
                job.resume.CopyFrom(update.checkpoint)
            fields.append("resume")
        if update.outcome is not None:
            result = update.outcome.result
            job.outcome.CopyFrom(update.outcome)
            job.output_uri, job.output_size_bytes = result.output_uri, result.size_bytes
            job.feature_count = result.feature_count
            fields += ["output_uri", "output_size_bytes", "feature_count", "outcome"]
        if update.error is not None and update.state == ppb.JOB_STATE_FAILED:
            job.error_message = update.error.message
            job.error_details.CopyFrom(update.error)
            fields += ["error_message", "error_details"]
        if update.started:
            job.started_at.CopyFrom(_now())
            fields.append("started_at")
        if update.finished:
            job.finished_at.CopyFrom(_now())
            fields.append("finished_at")
        return requested_of(self._store.update_job(job, fields))

    def unfinished(self) -> Iterator[ExportRecord]:
        states = [ppb.JOB_STATE_RUNNING, ppb.JOB_STATE_QUEUED]
        return (record_of(stored) for stored in self._store.all_jobs(states=states))

    def ended_before(self, cutoff: float) -> Iterator[str]:
        before = timestamp_pb2.Timestamp()
        before.FromNanoseconds(int(cutoff * 1e9))
        ended = (ppb.JOB_STATE_SUCCEEDED, ppb.JOB_STATE_CANCELLED, ppb.JOB_STATE_FAILED)
        return (s.job_id for s in self._store.all_jobs(states=ended, finished_before=before))

    def claim(self, job_id: str, holder: str, lease_seconds: float) -> Claim:
        claimed, stored = self._store.claim_job(job_id, holder, lease_seconds)
        return Claim(claimed, requested_of(stored))

    def request(self, job_id: str, reason: StopReason) -> None:
        state = next(s for s, r in _REQUESTS.items() if r is reason)
        self._store.update_job(
            spb.ExportJob(job_id=job_id, requested_state=state), ["requested_state"]
        )
