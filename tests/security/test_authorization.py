"""Whose SAEs and jobs a caller sees: its own; another owner's are NOT_FOUND, as if absent.

Alice's SAE and finished export are made through the real services with her token; mallory,
another user, tries every way in; root (admin) sees everything; the store's internal writes
refuse users and leave the database untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from sqlalchemy import text

from tests.export.service.stack import export_config, token_source, wait_for, write_tokens
from tests.security.conftest import AliceExport, SecureStack, sae_message

UNKNOWN_JOB = "0" * 32


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)  # a server stream fails while it is read
    return caught.value


def assert_hidden(error: grpc.RpcError, unknown: grpc.RpcError, secret: str) -> None:
    """NOT_FOUND worded exactly as for an id that does not exist: nothing leaks."""
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == unknown.details().replace(UNKNOWN_JOB, secret)


JOB_CALLS: dict[str, Callable[[Any, str], Any]] = {
    "GetExport": lambda s, j: s.GetExport(epb.GetExportRequest(job_id=j)),
    "WatchExport": lambda s, j: s.WatchExport(epb.WatchExportRequest(job_id=j)),
    "DownloadExport": lambda s, j: s.DownloadExport(epb.DownloadExportRequest(job_id=j)),
    "GetDownloadUrl": lambda s, j: s.GetDownloadUrl(epb.GetDownloadUrlRequest(job_id=j)),
    "CancelExport": lambda s, j: s.CancelExport(epb.CancelExportRequest(job_id=j)),
    "PauseExport": lambda s, j: s.PauseExport(epb.PauseExportRequest(job_id=j)),
    "ResumeExport": lambda s, j: s.ResumeExport(epb.ResumeExportRequest(job_id=j)),
    "ValidateArchive": lambda s, j: s.ValidateArchive(epb.ValidateArchiveRequest(job_id=j)),
}


@pytest.mark.parametrize("method", sorted(JOB_CALLS))
def test_another_users_job_is_not_found_for_mallory(
    secure_stack: SecureStack, alice_export: AliceExport, method: str
) -> None:
    mallory = secure_stack.exports("mallory")
    call = JOB_CALLS[method]
    unknown = rpc_error(lambda: call(mallory, UNKNOWN_JOB))
    error = rpc_error(lambda: call(mallory, alice_export.job_id))
    assert_hidden(error, unknown, alice_export.job_id)


def test_mallorys_cancel_leaves_alices_job_and_archive_as_they_were(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    mallory = secure_stack.exports("mallory")
    rpc_error(lambda: mallory.CancelExport(epb.CancelExportRequest(job_id=alice_export.job_id)))
    job = (
        secure_stack.exports("alice")
        .GetExport(epb.GetExportRequest(job_id=alice_export.job_id))
        .job
    )
    assert job.progress.state == ppb.JOB_STATE_SUCCEEDED
    chunks = secure_stack.exports("alice").DownloadExport(
        epb.DownloadExportRequest(job_id=alice_export.job_id)
    )
    assert sum(len(c.chunk) for c in chunks) == job.result.size_bytes > 0


def test_mallorys_listing_holds_only_her_own_jobs(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    listed = secure_stack.exports("mallory").ListExports(epb.ListExportsRequest()).jobs
    assert alice_export.job_id not in {job.job_id for job in listed}
    assert all(job.owner == "mallory" for job in listed)


def test_listing_another_owner_by_name_is_refused(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    error = rpc_error(
        lambda: secure_stack.exports("mallory").ListExports(epb.ListExportsRequest(owner="alice"))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "owner" in error.details()


def test_the_owner_sees_and_lists_her_job(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    alice = secure_stack.exports("alice")
    listed = alice.ListExports(epb.ListExportsRequest()).jobs
    assert [job.job_id for job in listed] == [alice_export.job_id]
    assert listed[0].owner == "alice"


def test_an_admin_sees_every_owners_jobs(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    root = secure_stack.exports("root")
    listed = root.ListExports(epb.ListExportsRequest()).jobs
    assert alice_export.job_id in {job.job_id for job in listed}
    got = root.GetExport(epb.GetExportRequest(job_id=alice_export.job_id)).job
    assert got.owner == "alice"


def test_a_job_belongs_to_the_caller_not_to_the_owner_field(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    request = epb.StartExportRequest(
        sae_id=alice_export.sae_id, owner="mallory", config=export_config()
    )
    error = rpc_error(lambda: secure_stack.exports("alice").StartExport(request))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "owner" in error.details()


def test_mallory_cannot_export_or_read_alices_sae(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    sae_id = alice_export.sae_id
    unknown = rpc_error(
        lambda: secure_stack.records("mallory").GetSae(spb.GetSaeRequest(sae_id="no-such-sae"))
    )
    mallory = secure_stack.records("mallory")
    calls: list[Callable[[], Any]] = [
        lambda: secure_stack.exports("mallory").StartExport(
            epb.StartExportRequest(sae_id=sae_id, config=export_config())
        ),
        lambda: secure_stack.exports("mallory").ValidateExport(
            epb.ValidateExportRequest(sae_id=sae_id, config=export_config())
        ),
        lambda: secure_stack.exports("mallory").GetFeatureDashboard(
            epb.GetFeatureDashboardRequest(sae_id=sae_id, feature_index=0)
        ),
        lambda: mallory.GetSae(spb.GetSaeRequest(sae_id=sae_id)),
        lambda: mallory.ListFeatures(spb.ListFeaturesRequest(sae_id=sae_id)),
        lambda: mallory.AddExplanations(spb.AddExplanationsRequest(sae_id=sae_id)),
    ]
    for call in calls:
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == unknown.details().replace("no-such-sae", sae_id)
    listed = secure_stack.records("mallory").ListSaes(spb.ListSaesRequest()).saes
    assert sae_id not in {sae.sae_id for sae in listed}


def test_a_registered_sae_belongs_to_the_caller(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    sae = secure_stack.records("root").GetSae(spb.GetSaeRequest(sae_id=alice_export.sae_id)).sae
    assert sae.owner == "alice"
    error = rpc_error(
        lambda: secure_stack.records("mallory").CreateSae(
            spb.CreateSaeRequest(sae=sae_message("posing-sae", "/nowhere", owner="alice"))
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def stored_job(stack: SecureStack, job_id: str) -> tuple[Any, ...]:
    engine = stack.database()
    try:
        with engine.connect() as connection:
            query = "SELECT state, output_uri, owner, updated_at FROM export_jobs WHERE job_id = :j"
            row = connection.execute(text(query), {"j": job_id}).one()
    finally:
        engine.dispose()
    return tuple(row)


@pytest.mark.parametrize("caller", ["alice", "mallory", "root"])
def test_store_job_writes_refuse_every_non_service_identity(
    secure_stack: SecureStack, alice_export: AliceExport, caller: str
) -> None:
    before = stored_job(secure_stack, alice_export.job_id)
    forged = spb.ExportJob(job_id=alice_export.job_id, output_uri="exports/other/archive.zip")
    request = spb.UpdateExportJobRequest(job=forged, update_mask=["output_uri"])
    error = rpc_error(lambda: secure_stack.records(caller).UpdateExportJob(request))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "UpdateExportJob" in error.details()
    assert stored_job(secure_stack, alice_export.job_id) == before


def test_store_delete_sae_refuses_a_user_and_keeps_the_sae(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    request = spb.DeleteSaeRequest(sae_id=alice_export.sae_id)
    for caller in ("mallory", "alice"):
        error = rpc_error(lambda c=caller: secure_stack.records(c).DeleteSae(request))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    got = secure_stack.records("alice").GetSae(spb.GetSaeRequest(sae_id=alice_export.sae_id))
    assert got.sae.sae_id == alice_export.sae_id


def test_store_internal_reads_refuse_a_user(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    mallory = secure_stack.records("mallory")
    for call in (
        lambda: mallory.GetExportJob(spb.GetExportJobRequest(job_id=alice_export.job_id)),
        lambda: mallory.ListExportJobs(spb.ListExportJobsRequest()),
    ):
        assert rpc_error(call).code() == grpc.StatusCode.PERMISSION_DENIED


def test_compute_runs_computations_only_for_services(secure_stack: SecureStack) -> None:
    compute = secure_stack.computation("mallory")
    for call in (
        lambda: compute.GetComputation(cpb.GetComputationRequest(job_id="any")),
        lambda: compute.CancelComputation(cpb.CancelComputationRequest(job_id="any")),
        lambda: compute.ComputeDashboards(cpb.ComputeDashboardsRequest()),
    ):
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "mallory" in error.details()


def test_another_users_export_as_delta_base_reads_as_missing(
    secure_stack: SecureStack, alice_export: AliceExport, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.export.service.stack import write_sae_folder

    folder = write_sae_folder(tmp_path_factory.mktemp("mallory") / "sae")
    mallory_sae = "mallory-sae"
    secure_stack.records("mallory").CreateSae(
        spb.CreateSaeRequest(sae=sae_message(mallory_sae, str(folder)))
    )
    exports = secure_stack.exports("mallory")

    def validate(base: str, **options: Any) -> grpc.RpcError:
        config = export_config(delta_base_job_id=base, **options)
        request = epb.ValidateExportRequest(sae_id=mallory_sae, config=config)
        return rpc_error(lambda: exports.ValidateExport(request))

    unknown, hidden = validate(UNKNOWN_JOB), validate(alice_export.job_id)
    assert_hidden(hidden, unknown, alice_export.job_id)
    # A config error comes first for both alike: it cannot tell a hidden base from a missing one.
    for bad in ({"device": "tpu"}, {"formats": [7]}):
        unknown, hidden = validate(UNKNOWN_JOB, **bad), validate(alice_export.job_id, **bad)
        assert hidden.code() == unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert hidden.details() == unknown.details()


def test_mallory_cannot_cancel_or_pause_alices_running_job(
    secure_stack: SecureStack, alice_export: AliceExport, tmp_path: Path
) -> None:
    rows = token_source(write_tokens(tmp_path / "tokens.npy", rows=384, seed=7))
    config = export_config(rows, device="cpu", batch_size=4, dashboard=dpb.DashboardParams(
        n_top_examples=23, histogram_scale=dpb.BIN_SCALE_LINEAR))  # fmt: skip
    alice = secure_stack.exports("alice")
    stream = alice.StartExport(epb.StartExportRequest(sae_id=alice_export.sae_id, config=config))
    job_id = wait_for(
        stream, lambda m: m.progress.stage == ppb.STAGE_ACTIVATION_PASS
    ).progress.job_id
    mallory = secure_stack.exports("mallory")
    try:
        for call in (JOB_CALLS["CancelExport"], JOB_CALLS["PauseExport"]):
            assert rpc_error(lambda c=call: c(mallory, job_id)).code() == grpc.StatusCode.NOT_FOUND
        state = alice.GetExport(epb.GetExportRequest(job_id=job_id)).job.progress.state
        assert state == ppb.JOB_STATE_RUNNING
    finally:
        alice.CancelExport(epb.CancelExportRequest(job_id=job_id))
        stream.cancel()
