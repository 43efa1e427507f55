"""SAE records over gRPC: create, read, list with pages, delete with everything under it."""

from __future__ import annotations

import grpc
import pytest
from mistudio.store.v1 import store_service_pb2 as pb
from mistudio.store.v1.store_service_pb2_grpc import StoreServiceStub

from tests.store.helpers import (
    bad_request_fields,
    make_dashboard,
    make_sae,
    resource_info,
    serialized,
)


def test_created_sae_reads_back_with_every_field(stub: StoreServiceStub) -> None:
    sent = make_sae("stories260k-l2-res-512")
    created = stub.CreateSae(pb.CreateSaeRequest(sae=sent)).sae
    got = stub.GetSae(pb.GetSaeRequest(sae_id=sent.sae_id)).sae
    assert got == created
    assert got.created_at.seconds > 0 and got.updated_at == got.created_at
    assert got.owner == "local"  # the caller: with no credentials configured, the local user
    for stamped in ("created_at", "updated_at", "owner"):
        got.ClearField(stamped)
    assert got == sent


def test_duplicate_sae_id_is_already_exists(stub: StoreServiceStub) -> None:
    stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("dup")))
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("dup")))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "dup" in str(caught.value.details())


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"sae_id": "Has Spaces"}, "sae.sae_id"),
        ({"sae_id": ""}, "sae.sae_id"),
        ({"d_in": 0}, "sae.d_in"),
        ({"d_sae": -4}, "sae.d_sae"),
        ({"hook_point": ""}, "sae.hook_point"),
        ({"model_id": " "}, "sae.model_id"),
        ({"architecture": pb.ARCHITECTURE_UNSPECIFIED}, "sae.architecture"),
        ({"l0": float("nan")}, "sae.l0"),
        ({"neuronpedia_source_set": "x" * 257}, "sae.neuronpedia_source_set"),
    ],
)
def test_malformed_sae_is_invalid_argument_naming_the_field(
    stub: StoreServiceStub, fields: dict[str, object], field: str
) -> None:
    sae = make_sae()
    for name, value in fields.items():
        setattr(sae, name, value)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateSae(pb.CreateSaeRequest(sae=sae))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == [field]


def test_unknown_sae_is_not_found_with_resource_info(stub: StoreServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetSae(pb.GetSaeRequest(sae_id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = resource_info(caught.value)
    assert (info.resource_type, info.resource_name) == ("mistudio.store.v1.Sae", "nope")


def test_list_pages_through_saes_in_id_order(stub: StoreServiceStub) -> None:
    ids = [f"sae-{i:02d}" for i in range(7)]
    for sae_id in reversed(ids):
        stub.CreateSae(pb.CreateSaeRequest(sae=make_sae(sae_id)))
    seen, token, pages = [], "", 0
    while True:
        page = stub.ListSaes(pb.ListSaesRequest(page_size=3, page_token=token))
        seen += [s.sae_id for s in page.saes]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    assert pages == 3


def test_page_size_zero_means_the_default(stub: StoreServiceStub) -> None:
    stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("one")))
    page = stub.ListSaes(pb.ListSaesRequest())
    assert [s.sae_id for s in page.saes] == ["one"] and page.next_page_token == ""


@pytest.mark.parametrize("page_size", [51, -1])
def test_oversized_or_negative_page_is_invalid_argument(
    stub: StoreServiceStub, page_size: int
) -> None:
    # The test server's max_page_size is 50.
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListSaes(pb.ListSaesRequest(page_size=page_size))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["page_size"]


@pytest.mark.parametrize("token", ["%%%not-base64", "eyJmb28iOiAxfQ", "bm90IGpzb24"])
def test_bad_page_token_is_invalid_argument(stub: StoreServiceStub, token: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListSaes(pb.ListSaesRequest(page_token=token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["page_token"]


def test_delete_removes_the_sae_and_everything_stored_for_it(stub: StoreServiceStub) -> None:
    stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("doomed")))
    stub.UpsertFeatures(
        pb.UpsertFeaturesRequest(sae_id="doomed", features=[pb.Feature(feature_index=1)])
    )
    stub.AddExplanations(
        pb.AddExplanationsRequest(
            sae_id="doomed", explanations=[pb.Explanation(feature_index=1, description="d")]
        )
    )
    stub.PutDashboards(
        iter(
            [
                pb.PutDashboardsRequest(
                    sae_id="doomed", serialized_dashboards=serialized(make_dashboard(1))
                )
            ]
        )
    )
    job = stub.CreateExportJob(pb.CreateExportJobRequest(job=pb.ExportJob(sae_id="doomed"))).job

    stub.DeleteSae(pb.DeleteSaeRequest(sae_id="doomed"))

    with pytest.raises(grpc.RpcError) as caught:
        stub.GetExportJob(pb.GetExportJobRequest(job_id=job.job_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Recreated under the same id, the SAE starts empty: nothing was left behind.
    stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("doomed")))
    assert not stub.ListFeatures(pb.ListFeaturesRequest(sae_id="doomed")).features
    assert not stub.ListExplanations(pb.ListExplanationsRequest(sae_id="doomed")).explanations
    cached = stub.ListCachedDashboards(pb.ListCachedDashboardsRequest(sae_id="doomed"))
    assert not cached.dashboards


def test_deleting_an_unknown_sae_is_not_found(stub: StoreServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.DeleteSae(pb.DeleteSaeRequest(sae_id="ghost"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert resource_info(caught.value).resource_name == "ghost"
