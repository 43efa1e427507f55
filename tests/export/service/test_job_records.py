"""What the export writes to the store while a job runs: progress often, the resume state only
at checkpoints, and a finished job's typed outcome; which finished jobs retention removes."""

from __future__ import annotations

import time
from typing import Any

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.jobs.control import StopReason
from mistudio_common.jobs.store import JobUpdate
from mistudio_export.clients import StoreClient
from mistudio_export.job_store import StoreJobStore

from tests.export.service.stack import Stack, export_config, run_to_end


def stored_job(stack: Stack, job_id: str) -> spb.ExportJob:
    return stack.records.GetExportJob(spb.GetExportJobRequest(job_id=job_id)).job


def test_progress_writes_leave_the_checkpoint_to_explicit_saves(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(
        request_id="records", sae_id=sae_id, config=export_config(tokens)
    )
    job_id = run_to_end(stack.exports.StartExport(request))[-1].progress.job_id
    before = stored_job(stack, job_id)
    records = StoreJobStore(StoreClient(stack.store.address))
    progress = ppb.Progress(
        job_id=job_id, sequence=before.progress.sequence + 1, state=before.state
    )

    records.write(job_id, JobUpdate(before.state, progress))
    written = stored_job(stack, job_id)
    assert written.progress.sequence == progress.sequence
    assert written.resume == before.resume

    checkpoint = jpb.ExportCheckpoint(collect=jpb.CollectCheckpoint(chunks_done=7))
    records.write(job_id, JobUpdate(written.state, progress, checkpoint))
    assert stored_job(stack, job_id).resume.collect == jpb.CollectCheckpoint(chunks_done=7)


def test_a_progress_write_answers_with_the_stop_another_instance_asked_for(
    stack: Stack, sae_id: str
) -> None:
    store = StoreClient(stack.store.address)
    job, _ = store.create_job(spb.ExportJob(sae_id=sae_id, request_id="asked elsewhere"))
    records = StoreJobStore(store)
    assert records.claim(job.job_id, "this test", 300).held  # the service never adopts it
    progress = ppb.Progress(job_id=job.job_id, sequence=1, state=ppb.JOB_STATE_RUNNING)
    assert records.write(job.job_id, JobUpdate(ppb.JOB_STATE_RUNNING, progress)) is None
    records.request(job.job_id, StopReason.CANCEL)
    progress.sequence = 2
    answer = records.write(job.job_id, JobUpdate(ppb.JOB_STATE_RUNNING, progress))
    assert answer is StopReason.CANCEL  # seen by the holder without waiting for a renewal
    records.write(job.job_id, JobUpdate(ppb.JOB_STATE_CANCELLED, progress, finished=True))


def test_a_finished_export_keeps_its_outcome_and_its_feature_hashes_beside_it(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(
        request_id="outcome", sae_id=sae_id, config=export_config(tokens)
    )
    last = run_to_end(stack.exports.StartExport(request))[-1]
    stored = stored_job(stack, last.progress.job_id)
    assert not stored.HasField("resume")
    assert stored.outcome.result == last.result
    assert stored.outcome.feature_hash_count == last.result.feature_count
    hashes = StoreClient(stack.store.address).feature_hashes(stored.job_id)
    assert sorted(hashes) == list(range(last.result.feature_count))
    assert stored.outcome.measured.features == last.result.feature_count
    assert stored.outcome.render_key


def test_retention_sees_the_jobs_that_ended_before_its_cutoff(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(
        request_id="retention", sae_id=sae_id, config=export_config(tokens)
    )
    last = run_to_end(stack.exports.StartExport(request))[-1]
    job_id = last.progress.job_id
    store = CountingStoreClient(stack.store.address)
    records = StoreJobStore(store)
    ended = stored_job(stack, job_id).finished_at.ToSeconds()
    assert job_id not in set(records.ended_before(ended - 1))
    expired = set(records.ended_before(time.time() + 1))
    assert job_id in expired
    store.jobs_read = 0
    assert list(records.ended_before(0)) == []
    assert store.jobs_read == 0  # the store filters: a pass reads only the jobs it removes


class CountingStoreClient(StoreClient):
    """The real store client, counting the job records the store sends back."""

    jobs_read = 0

    def list_jobs(self, **filters: Any) -> spb.ListExportJobsResponse:
        page = super().list_jobs(**filters)
        self.jobs_read += len(page.jobs)
        return page
