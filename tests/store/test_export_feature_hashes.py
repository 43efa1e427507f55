"""Feature hashes of an export's archive: their own records, so the job record stays small."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.store.v1 import store_service_pb2 as pb
from mistudio.store.v1.store_service_pb2_grpc import StoreServiceStub

from tests.store.helpers import bad_request_fields, make_sae

WIDE_SAE = 100_000


def sha(index: int) -> str:
    return hashlib.sha256(str(index).encode()).hexdigest()


@pytest.fixture
def job_id(stub: StoreServiceStub) -> str:
    stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("wide", d_sae=WIDE_SAE)))
    job = pb.ExportJob(sae_id="wide", owner="alice")
    return str(stub.CreateExportJob(pb.CreateExportJobRequest(job=job)).job.job_id)


def put(stub: StoreServiceStub, job_id: str, indices: range) -> None:
    for start in range(indices.start, indices.stop, 10_000):
        batch = [
            pb.FeatureHash(feature_index=i, content_hash=sha(i))
            for i in range(start, min(start + 10_000, indices.stop))
        ]
        request = pb.PutExportFeatureHashesRequest(job_id=job_id, hashes=batch)
        assert stub.PutExportFeatureHashes(request).written_count == len(batch)


def listed(stub: StoreServiceStub, job_id: str, page_size: int = 0) -> dict[int, str]:
    found: dict[int, str] = {}
    token = ""
    while True:
        request = pb.ListExportFeatureHashesRequest(
            job_id=job_id, page_size=page_size, page_token=token
        )
        page = stub.ListExportFeatureHashes(request)
        assert len(page.hashes) <= (page_size or 1000)
        found.update((h.feature_index, h.content_hash) for h in page.hashes)
        token = page.next_page_token
        if not token:
            return found


def test_a_100k_feature_outcome_keeps_the_job_record_small(
    stub: StoreServiceStub, job_id: str
) -> None:
    put(stub, job_id, range(WIDE_SAE))
    outcome = jpb.ExportOutcome(render_key="r" * 64, feature_hash_count=WIDE_SAE)
    change = pb.ExportJob(job_id=job_id, outcome=outcome)
    stub.UpdateExportJob(pb.UpdateExportJobRequest(job=change, update_mask=["outcome"]))
    record = stub.GetExportJob(pb.GetExportJobRequest(job_id=job_id)).job
    assert record.outcome.feature_hash_count == WIDE_SAE
    assert record.ByteSize() < 1024  # 100k hashes inline were ~7.5 MB
    hashes = listed(stub, job_id, page_size=10_000)
    assert len(hashes) == WIDE_SAE and hashes[99_999] == sha(99_999)


def test_hashes_list_in_index_order_over_pages_and_a_put_replaces(
    stub: StoreServiceStub, job_id: str
) -> None:
    put(stub, job_id, range(5))
    replaced = pb.FeatureHash(feature_index=2, content_hash="f" * 64)
    stub.PutExportFeatureHashes(pb.PutExportFeatureHashesRequest(job_id=job_id, hashes=[replaced]))
    first = stub.ListExportFeatureHashes(
        pb.ListExportFeatureHashesRequest(job_id=job_id, page_size=2)
    )
    assert [h.feature_index for h in first.hashes] == [0, 1] and first.next_page_token
    assert listed(stub, job_id, page_size=2) == {
        0: sha(0),
        1: sha(1),
        2: "f" * 64,
        3: sha(3),
        4: sha(4),
    }


def test_deleting_the_job_deletes_its_hashes(stub: StoreServiceStub, job_id: str) -> None:
    put(stub, job_id, range(3))
    stub.DeleteExportJob(pb.DeleteExportJobRequest(job_id=job_id))
    with pytest.raises(grpc.RpcError) as caught:
        listed(stub, job_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    again = pb.ExportJob(job_id=job_id, sae_id="wide", owner="alice")
    stub.CreateExportJob(pb.CreateExportJobRequest(job=again))
    assert listed(stub, job_id) == {}  # a new job under the same id inherits nothing


def test_hashes_of_an_unknown_job_are_not_found(stub: StoreServiceStub) -> None:
    hashes = [pb.FeatureHash(feature_index=0, content_hash=sha(0))]
    with pytest.raises(grpc.RpcError) as caught:
        stub.PutExportFeatureHashes(
            pb.PutExportFeatureHashesRequest(job_id="nothing-here", hashes=hashes)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (pb.FeatureHash(feature_index=-1, content_hash="a" * 64), "hashes[0].feature_index"),
        (pb.FeatureHash(feature_index=0, content_hash="not-a-sha"), "hashes[0].content_hash"),
    ],
)
def test_a_malformed_hash_is_rejected_naming_the_field(
    stub: StoreServiceStub, job_id: str, bad: pb.FeatureHash, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.PutExportFeatureHashes(pb.PutExportFeatureHashesRequest(job_id=job_id, hashes=[bad]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == [field]


def test_a_page_larger_than_10000_is_rejected(stub: StoreServiceStub, job_id: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListExportFeatureHashes(
            pb.ListExportFeatureHashesRequest(job_id=job_id, page_size=10_001)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
