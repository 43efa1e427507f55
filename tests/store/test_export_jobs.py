"""Export job records over gRPC: idempotent create, masked updates, newest-first listing."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as pb
from mistudio.store.v1.store_service_pb2_grpc import StoreServiceStub

from tests.store.helpers import bad_request_fields, make_sae, resource_info, status_of


@pytest.fixture
def sae_id(stub: StoreServiceStub) -> str:
    stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("jobs")))
    return "jobs"


def create(stub: StoreServiceStub, **fields: object) -> pb.CreateExportJobResponse:
    return stub.CreateExportJob(pb.CreateExportJobRequest(job=pb.ExportJob(**fields)))  # type: ignore[arg-type]


def test_create_assigns_an_id_and_starts_queued(stub: StoreServiceStub, sae_id: str) -> None:
    config = epb.ExportConfig(
        formats=[epb.EXPORT_FORMAT_NEURONPEDIA, epb.EXPORT_FORMAT_SAELENS], batch_size=64
    )
    response = create(stub, sae_id=sae_id, owner="alice", request_id="req-1", config=config)
    job = response.job
    assert response.created
    assert job.job_id and job.state == ppb.JOB_STATE_QUEUED
    assert (job.sae_id, job.owner, job.request_id, job.config) == (sae_id, "alice", "req-1", config)
    assert stub.GetExportJob(pb.GetExportJobRequest(job_id=job.job_id)).job == job


def test_create_is_idempotent_on_sae_and_request_id(stub: StoreServiceStub, sae_id: str) -> None:
    first = create(stub, sae_id=sae_id, request_id="same", owner="alice")
    again = create(stub, sae_id=sae_id, request_id="same", owner="alice")
    assert first.created and not again.created
    assert again.job == first.job
    other = create(stub, sae_id=sae_id, request_id="different")
    assert other.created and other.job.job_id != first.job.job_id
    without_key = [create(stub, sae_id=sae_id).job.job_id for _ in range(2)]
    assert without_key[0] != without_key[1]


def test_reused_request_id_from_another_owner_is_already_exists(
    stub: StoreServiceStub, sae_id: str
) -> None:
    create(stub, sae_id=sae_id, request_id="mine", owner="alice")
    with pytest.raises(grpc.RpcError) as caught:
        create(stub, sae_id=sae_id, request_id="mine", owner="mallory")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "differing fields: job.owner" in (caught.value.details() or "")


def test_reused_request_id_with_another_config_names_the_differing_fields(
    stub: StoreServiceStub, sae_id: str
) -> None:
    config = epb.ExportConfig(
        dashboard=dpb.DashboardParams(n_top_examples=20, context_left=8),
        formats=[epb.EXPORT_FORMAT_SAELENS],
    )
    create(stub, sae_id=sae_id, request_id="cfg", owner="alice", config=config)
    changed = epb.ExportConfig()
    changed.CopyFrom(config)
    changed.dashboard.n_top_examples = 30
    with pytest.raises(grpc.RpcError) as caught:
        create(stub, sae_id=sae_id, request_id="cfg", owner="alice", config=changed)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    message = caught.value.details() or ""
    assert "differing fields: job.config.dashboard.n_top_examples (fix:" in message


def test_client_chosen_job_id_must_be_unique(stub: StoreServiceStub, sae_id: str) -> None:
    create(stub, sae_id=sae_id, job_id="export-1")
    with pytest.raises(grpc.RpcError) as caught:
        create(stub, sae_id=sae_id, job_id="export-1")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_update_writes_only_the_masked_fields(stub: StoreServiceStub, sae_id: str) -> None:
    job = create(stub, sae_id=sae_id, owner="alice", output_uri="keep").job
    progress = ppb.Progress(
        job_id=job.job_id,
        sequence=7,
        state=ppb.JOB_STATE_RUNNING,
        stage=ppb.STAGE_LOGIT_LENS,
        fraction=0.4,
        stages=[ppb.StageProgress(stage=ppb.STAGE_LOGIT_LENS, items_done=3)],
    )
    resume = jpb.ExportCheckpoint(collect=jpb.CollectCheckpoint(chunks_done=3))
    change = pb.ExportJob(
        job_id=job.job_id,
        state=ppb.JOB_STATE_RUNNING,
        progress=progress,
        resume=resume,
        owner="mallory",
        output_uri="overwritten?",
    )
    change.started_at.GetCurrentTime()
    updated = stub.UpdateExportJob(
        pb.UpdateExportJobRequest(
            job=change, update_mask=["state", "progress", "resume", "started_at"]
        )
    ).job
    assert updated.state == ppb.JOB_STATE_RUNNING
    assert updated.progress == progress and updated.resume == resume
    assert updated.started_at == change.started_at
    assert (updated.owner, updated.output_uri) == ("alice", "keep")
    assert updated.updated_at.ToDatetime() >= job.updated_at.ToDatetime()
    assert stub.GetExportJob(pb.GetExportJobRequest(job_id=job.job_id)).job == updated


def test_a_failed_job_keeps_its_structured_error(stub: StoreServiceStub, sae_id: str) -> None:
    job = create(stub, sae_id=sae_id).job
    details = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="out of memory")
    details.details.add().Pack(error_details_pb2.ErrorInfo(reason="OUT_OF_MEMORY"))
    change = pb.ExportJob(
        job_id=job.job_id,
        state=ppb.JOB_STATE_FAILED,
        error_message="out of memory",
        error_details=details,
    )
    change.finished_at.GetCurrentTime()
    mask = ["state", "error_message", "error_details", "finished_at"]
    failed = stub.UpdateExportJob(pb.UpdateExportJobRequest(job=change, update_mask=mask)).job
    assert (failed.state, failed.error_message, failed.error_details) == (
        ppb.JOB_STATE_FAILED,
        "out of memory",
        details,
    )


def test_progress_with_a_status_and_packed_details_round_trips(
    stub: StoreServiceStub, sae_id: str
) -> None:
    job = create(stub, sae_id=sae_id).job
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="ResourceExhausted", domain="mistudio"))
    error = status_pb2.Status(code=8, message="out of memory", details=[info])
    progress = ppb.Progress(job_id=job.job_id, state=ppb.JOB_STATE_FAILED, error=error)
    change = pb.ExportJob(job_id=job.job_id, state=ppb.JOB_STATE_FAILED, progress=progress)
    request = pb.UpdateExportJobRequest(job=change, update_mask=["state", "progress"])
    assert stub.UpdateExportJob(request).job.progress == progress


def test_a_failed_job_may_resume(stub: StoreServiceStub, sae_id: str) -> None:
    job = create(stub, sae_id=sae_id).job
    for state in (ppb.JOB_STATE_FAILED, ppb.JOB_STATE_RUNNING):
        change = pb.ExportJob(job_id=job.job_id, state=state)
        updated = stub.UpdateExportJob(pb.UpdateExportJobRequest(job=change, update_mask=["state"]))
    assert updated.job.state == ppb.JOB_STATE_RUNNING


def test_a_succeeded_job_cannot_change_state(stub: StoreServiceStub, sae_id: str) -> None:
    job = create(stub, sae_id=sae_id).job
    done = pb.ExportJob(job_id=job.job_id, state=ppb.JOB_STATE_SUCCEEDED)
    stub.UpdateExportJob(pb.UpdateExportJobRequest(job=done, update_mask=["state"]))
    again = pb.ExportJob(job_id=job.job_id, state=ppb.JOB_STATE_RUNNING)
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpdateExportJob(pb.UpdateExportJobRequest(job=again, update_mask=["state"]))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    failure = error_details_pb2.PreconditionFailure()
    assert any(
        d.Unpack(failure) for d in status_of(caught.value).details if d.Is(failure.DESCRIPTOR)
    )
    assert failure.violations[0].subject == "job.state"


@pytest.mark.parametrize(
    ("mask", "field"),
    [([], "update_mask"), (["sae_id"], "update_mask"), (["colour"], "update_mask")],
)
def test_bad_update_mask_is_invalid_argument(
    stub: StoreServiceStub, sae_id: str, mask: list[str], field: str
) -> None:
    job = create(stub, sae_id=sae_id).job
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpdateExportJob(pb.UpdateExportJobRequest(job=job, update_mask=mask))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == [field]


def test_unknown_job_and_unknown_sae_are_not_found(stub: StoreServiceStub, sae_id: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetExportJob(pb.GetExportJobRequest(job_id="missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = resource_info(caught.value)
    assert (info.resource_type, info.resource_name) == ("mistudio.store.v1.ExportJob", "missing")
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpdateExportJob(
            pb.UpdateExportJobRequest(job=pb.ExportJob(job_id="missing"), update_mask=["owner"])
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        create(stub, sae_id="ghost")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert resource_info(caught.value).resource_name == "ghost"


def test_list_is_newest_first_with_filters_and_pages(stub: StoreServiceStub, sae_id: str) -> None:
    stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("other")))
    ids = [create(stub, sae_id=sae_id, owner=f"o{i % 2}").job.job_id for i in range(5)]
    create(stub, sae_id="other", owner="o0")
    running = pb.ExportJob(job_id=ids[1], state=ppb.JOB_STATE_RUNNING)
    stub.UpdateExportJob(pb.UpdateExportJobRequest(job=running, update_mask=["state"]))

    def listed(**filters: object) -> list[str]:
        request = pb.ListExportJobsRequest(page_size=2, **filters)  # type: ignore[arg-type]
        found: list[str] = []
        while True:
            page = stub.ListExportJobs(request)
            found += [j.job_id for j in page.jobs]
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token

    assert listed(sae_id=sae_id) == ids[::-1]
    assert len(listed()) == 6
    assert listed(sae_id=sae_id, owner="o0") == [ids[4], ids[2], ids[0]]
    assert listed(states=[ppb.JOB_STATE_RUNNING]) == [ids[1]]
    assert listed(states=[ppb.JOB_STATE_QUEUED], owner="o1") == [ids[3]]


def finish(stub: StoreServiceStub, job_id: str, seconds: int) -> None:
    """Ends the job with finished_at ``seconds`` since the epoch."""
    ended = pb.ExportJob(job_id=job_id, state=ppb.JOB_STATE_SUCCEEDED)
    ended.finished_at.FromSeconds(seconds)
    mask = ["state", "finished_at"]
    stub.UpdateExportJob(pb.UpdateExportJobRequest(job=ended, update_mask=mask))


def test_list_finished_before_returns_only_jobs_that_ended_before_then(
    stub: StoreServiceStub, sae_id: str
) -> None:
    ids = [create(stub, sae_id=sae_id).job.job_id for _ in range(4)]
    finish(stub, ids[0], 1_000)
    finish(stub, ids[1], 2_000)
    finish(stub, ids[2], 3_000)  # ids[3] never finished
    request = pb.ListExportJobsRequest(page_size=1)
    request.finished_before.FromSeconds(3_000)
    found: list[str] = []
    while True:
        page = stub.ListExportJobs(request)
        found += [j.job_id for j in page.jobs]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert found == [ids[1], ids[0]]


def test_unspecified_state_filter_is_invalid_argument(stub: StoreServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListExportJobs(pb.ListExportJobsRequest(states=[ppb.JOB_STATE_UNSPECIFIED]))
    assert bad_request_fields(caught.value) == ["states[0]"]


def test_overlong_request_id_is_invalid_argument_not_a_database_error(
    stub: StoreServiceStub, sae_id: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        create(stub, sae_id=sae_id, request_id="r" * 129)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["job.request_id"]


def test_a_list_of_jobs_with_large_configs_comes_in_pages_under_the_message_limit(
    stub: StoreServiceStub, sae_id: str
) -> None:
    """17 jobs whose configs are as large as the export accepts (1000 text paths of 4 KB: 4 MB
    each) once failed every list of 20 with RESOURCE_EXHAUSTED (68 MB > 64 MiB)."""
    paths = ["/" + "d/" * 2046 + str(i) for i in range(1000)]  # <= 4096 characters
    config = epb.ExportConfig(tokens=tpb.TokenSource(text=tpb.TextFiles(paths=paths)))
    assert config.ByteSize() > 4_000_000
    for i in range(17):
        create(stub, sae_id=sae_id, owner="a", request_id=f"big-{i}", config=config)
    listed: list[str] = []
    token = ""
    while True:
        page = stub.ListExportJobs(pb.ListExportJobsRequest(page_size=20, page_token=token))
        assert len(page.jobs) > 0 and page.ByteSize() <= 32 * 1024 * 1024
        listed += [job.request_id for job in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert sorted(listed) == sorted(f"big-{i}" for i in range(17))  # each once, none lost


def test_nul_character_in_owner_is_invalid_argument_not_a_database_error(
    stub: StoreServiceStub, sae_id: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        create(stub, sae_id=sae_id, owner="a\x00b")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["job.owner"]


def test_deleted_job_is_gone_and_deleting_it_again_is_not_found(
    stub: StoreServiceStub, sae_id: str
) -> None:
    job = create(stub, sae_id=sae_id, request_id="bye").job
    stub.DeleteExportJob(pb.DeleteExportJobRequest(job_id=job.job_id))
    for call in (
        lambda: stub.GetExportJob(pb.GetExportJobRequest(job_id=job.job_id)),
        lambda: stub.DeleteExportJob(pb.DeleteExportJobRequest(job_id=job.job_id)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert create(stub, sae_id=sae_id, request_id="bye").created  # the request_id is free again


def claim(stub: StoreServiceStub, job_id: str, holder: str, seconds: float) -> bool:
    request = pb.ClaimExportJobRequest(job_id=job_id, holder=holder, lease_seconds=seconds)
    return stub.ClaimExportJob(request).claimed


def test_a_live_lease_keeps_other_instances_off_a_job_until_it_is_given_back(
    stub: StoreServiceStub, sae_id: str
) -> None:
    job_id = create(stub, sae_id=sae_id).job.job_id
    assert claim(stub, job_id, "first", 60)
    assert claim(stub, job_id, "first", 60)  # renewing
    assert not claim(stub, job_id, "second", 60)
    job = stub.GetExportJob(pb.GetExportJobRequest(job_id=job_id)).job
    assert job.holder == "first" and job.HasField("lease_expires_at")
    assert claim(stub, job_id, "first", 0)  # given back
    assert claim(stub, job_id, "second", 60)


def test_an_expired_lease_is_taken_over(stub: StoreServiceStub, sae_id: str) -> None:
    job_id = create(stub, sae_id=sae_id).job.job_id
    assert claim(stub, job_id, "crashed", 0.001)
    while not claim(stub, job_id, "adopter", 60):  # the lease runs out within a moment
        pass
    assert stub.GetExportJob(pb.GetExportJobRequest(job_id=job_id)).job.holder == "adopter"


def test_a_finished_job_cannot_be_claimed(stub: StoreServiceStub, sae_id: str) -> None:
    job_id = create(stub, sae_id=sae_id, state=ppb.JOB_STATE_SUCCEEDED).job.job_id
    assert not claim(stub, job_id, "late", 60)


def test_the_lease_is_not_written_through_update(stub: StoreServiceStub, sae_id: str) -> None:
    job_id = create(stub, sae_id=sae_id).job.job_id
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpdateExportJob(
            pb.UpdateExportJobRequest(
                job=pb.ExportJob(job_id=job_id, holder="sneaky"), update_mask=["holder"]
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def request_stop(stub: StoreServiceStub, job_id: str, state: int) -> pb.ExportJob:
    job = pb.ExportJob(job_id=job_id, requested_state=state)  # type: ignore[arg-type]
    request = pb.UpdateExportJobRequest(job=job, update_mask=["requested_state"])
    return stub.UpdateExportJob(request).job


def test_a_stop_requested_of_a_held_job_reaches_its_holder_and_a_cancel_overrides_a_pause(
    stub: StoreServiceStub, sae_id: str
) -> None:
    job_id = create(stub, sae_id=sae_id, state=ppb.JOB_STATE_RUNNING).job.job_id
    assert claim(stub, job_id, "holder", 60)
    assert request_stop(stub, job_id, ppb.JOB_STATE_CANCELLED).requested_state == (
        ppb.JOB_STATE_CANCELLED
    )
    assert request_stop(stub, job_id, ppb.JOB_STATE_PAUSED).requested_state == (
        ppb.JOB_STATE_CANCELLED
    )
    renewed = stub.ClaimExportJob(
        pb.ClaimExportJobRequest(job_id=job_id, holder="holder", lease_seconds=60)
    )
    assert renewed.claimed and renewed.job.requested_state == ppb.JOB_STATE_CANCELLED


def test_recording_the_state_a_stop_asked_for_clears_the_request(
    stub: StoreServiceStub, sae_id: str
) -> None:
    job_id = create(stub, sae_id=sae_id, state=ppb.JOB_STATE_RUNNING).job.job_id
    request_stop(stub, job_id, ppb.JOB_STATE_PAUSED)
    running = pb.ExportJob(job_id=job_id, state=ppb.JOB_STATE_RUNNING)
    still = stub.UpdateExportJob(pb.UpdateExportJobRequest(job=running, update_mask=["state"]))
    assert still.job.requested_state == ppb.JOB_STATE_PAUSED  # progress leaves it for the holder
    paused = pb.ExportJob(job_id=job_id, state=ppb.JOB_STATE_PAUSED)
    done = stub.UpdateExportJob(pb.UpdateExportJobRequest(job=paused, update_mask=["state"]))
    assert done.job.requested_state == ppb.JOB_STATE_UNSPECIFIED


def test_a_stop_cannot_be_requested_of_a_job_that_stopped_already(
    stub: StoreServiceStub, sae_id: str
) -> None:
    job_id = create(stub, sae_id=sae_id, state=ppb.JOB_STATE_PAUSED).job.job_id
    with pytest.raises(grpc.RpcError) as caught:
        request_stop(stub, job_id, ppb.JOB_STATE_CANCELLED)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is paused; only a queued or running job" in (caught.value.details() or "")
    running = create(stub, sae_id=sae_id, state=ppb.JOB_STATE_RUNNING).job.job_id
    with pytest.raises(grpc.RpcError) as caught:
        request_stop(stub, running, ppb.JOB_STATE_SUCCEEDED)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
