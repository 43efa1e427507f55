"""S3ObjectStore against a real S3-protocol server (moto) on loopback: no mocked SDK."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from minio import Minio
from mistudio_common.errors import Cancelled, InvalidArgument, NotFound, Unavailable
from mistudio_export.object_store.s3 import S3ObjectStore

from .conftest import ACCESS_KEY, PART_SIZE, SECRET_KEY, new_s3_store, write


def raw_client(endpoint: str) -> Minio:
    return Minio(endpoint, ACCESS_KEY, SECRET_KEY, secure=False, region="us-east-1")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_first_write_creates_the_missing_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    store = new_s3_store(s3_endpoint, bucket="created-on-first-write")
    assert not raw_client(s3_endpoint).bucket_exists("created-on-first-write")

    store.put_file("a.txt", write(tmp_path, "a.txt", b"hello"))

    assert raw_client(s3_endpoint).bucket_exists("created-on-first-write")


def test_an_existing_bucket_is_reused(s3_endpoint: str, tmp_path: Path) -> None:
    raw_client(s3_endpoint).make_bucket("made-elsewhere")
    store = new_s3_store(s3_endpoint, bucket="made-elsewhere")

    store.put_file("a.txt", write(tmp_path, "a.txt", b"hello"))

    assert store.get_range("a.txt").read_all() == b"hello"


def test_a_file_larger_than_the_part_size_goes_up_in_parts(
    s3_store: S3ObjectStore, big_file: Path
) -> None:
    info = s3_store.put_file("exports/big.zip", big_file)

    # A multipart object's etag is "<md5 of part md5s>-<part count>".
    expected_parts = -(-big_file.stat().st_size // PART_SIZE)
    assert info.etag.endswith(f"-{expected_parts}")
    assert s3_store.stat("exports/big.zip").size == big_file.stat().st_size
    assert s3_store.get_range("exports/big.zip").read_all() == big_file.read_bytes()


def test_ranged_read_crosses_a_part_boundary(s3_store: S3ObjectStore, big_file: Path) -> None:
    s3_store.put_file("exports/big.zip", big_file)
    data = big_file.read_bytes()
    offset = PART_SIZE - 100

    part = s3_store.get_range("exports/big.zip", offset=offset, length=300).read_all()
    tail = s3_store.get_range("exports/big.zip", offset=2 * PART_SIZE + 7).read_all()

    assert part == data[offset : offset + 300]
    assert tail == data[2 * PART_SIZE + 7 :]


def test_a_cancelled_multipart_upload_leaves_no_object(
    s3_store: S3ObjectStore, big_file: Path
) -> None:
    def cancel_after_first_part(done: int, total: int) -> None:
        if done > PART_SIZE:
            raise Cancelled("export cancelled")

    with pytest.raises(Cancelled):
        s3_store.put_file("exports/big.zip", big_file, progress=cancel_after_first_part)

    assert not s3_store.exists("exports/big.zip")
    assert list(s3_store.list("exports/")) == []


def test_reading_from_a_bucket_that_does_not_exist_is_not_found(s3_endpoint: str) -> None:
    store = new_s3_store(s3_endpoint, bucket="never-created")

    with pytest.raises(NotFound) as err:
        store.stat("a.txt")
    assert list(store.list()) == []
    store.delete("a.txt")  # nothing to delete is not an error
    assert err.value.resource_type in ("bucket", "object")


def test_an_unreachable_endpoint_is_unavailable_with_a_fix(tmp_path: Path) -> None:
    store = S3ObjectStore(
        f"127.0.0.1:{closed_port()}", ACCESS_KEY, SECRET_KEY, "bucket", secure=False, retries=0
    )

    with pytest.raises(Unavailable) as err:
        store.put_file("a.txt", write(tmp_path, "a.txt", b"x"))
    assert "OBJECT_STORE_URL" in err.value.fix
    with pytest.raises(Unavailable):
        store.stat("a.txt")


def test_presigned_links_can_be_signed_for_a_public_host(s3_endpoint: str, tmp_path: Path) -> None:
    store = S3ObjectStore(
        s3_endpoint,
        ACCESS_KEY,
        SECRET_KEY,
        "public-host",
        secure=False,
        region="us-east-1",
        public_endpoint="downloads.example.org:9000",
    )
    store.put_file("a.txt", write(tmp_path, "a.txt", b"x"))

    url, _ = store.presigned_get_url("a.txt", 60)

    assert url.startswith("http://downloads.example.org:9000/public-host/a.txt?")
    assert "X-Amz-Expires=60" in url


def test_a_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        S3ObjectStore("127.0.0.1:9", "a", "b", "bucket", part_size=1024)


def test_an_invalid_bucket_name_is_refused_before_any_request() -> None:
    with pytest.raises(InvalidArgument) as err:
        S3ObjectStore("127.0.0.1:9", "a", "b", "Not_A_Bucket")
    assert err.value.field == "bucket"


def test_a_multipart_upload_a_crashed_writer_left_is_aborted_once_old_enough(
    s3_store: S3ObjectStore, tmp_path: Path
) -> None:
    """What a process killed mid-upload leaves: an upload begun, one part sent, never
    completed (invisible to listing, but stored and billed)."""
    s3_store.put_file("kept/a.bin", write(tmp_path, "a.bin", b"kept"))
    client = s3_store._client
    upload = client._create_multipart_upload(s3_store.bucket, "exports/crashed.zip", {})
    client._upload_part(s3_store.bucket, "exports/crashed.zip", b"x" * PART_SIZE, None, upload, 1)
    # (moto reports every upload as begun in 2010, so the cutoff's other side is not shown here)
    assert s3_store.remove_unfinished(before=time.time() + 1) == 1
    left = client._list_multipart_uploads(s3_store.bucket).uploads
    assert left == [] and [o.key for o in s3_store.list()] == ["kept/a.bin"]
