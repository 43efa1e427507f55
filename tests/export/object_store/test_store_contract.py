"""Behaviour every ObjectStore shares, run against a folder and a real S3 server alike."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mistudio_common.errors import InvalidArgument, NotFound
from mistudio_export.object_store import ObjectStore

from .conftest import write

DATA = bytes(range(256)) * 40  # 10 KiB with every byte value


def test_put_then_read_back_returns_the_same_bytes(store: ObjectStore, tmp_path: Path) -> None:
    info = store.put_file("exports/job-1/archive.zip", write(tmp_path, "a.zip", DATA))

    assert info.size == len(DATA)
    assert store.get_range("exports/job-1/archive.zip").read_all() == DATA


def test_stat_reports_size_and_the_same_etag_as_put(store: ObjectStore, tmp_path: Path) -> None:
    put = store.put_file("k/a.bin", write(tmp_path, "a.bin", DATA))
    info = store.stat("k/a.bin")

    assert (info.key, info.size) == ("k/a.bin", len(DATA))
    assert info.etag and info.etag == put.etag


def test_reading_from_an_offset_returns_the_tail(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file("k/a.bin", write(tmp_path, "a.bin", DATA))

    assert store.get_range("k/a.bin", offset=1000).read_all() == DATA[1000:]
    assert store.get_range("k/a.bin", offset=1000, length=24).read_all() == DATA[1000:1024]


def test_reading_at_the_end_is_empty_and_past_it_is_an_error(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.put_file("k/a.bin", write(tmp_path, "a.bin", DATA))

    assert store.get_range("k/a.bin", offset=len(DATA)).read_all() == b""
    assert store.get_range("k/a.bin", offset=10, length=0).read_all() == b""
    with pytest.raises(InvalidArgument):
        store.get_range("k/a.bin", offset=len(DATA) + 1)


def test_reads_are_streamed_in_chunks(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file("k/a.bin", write(tmp_path, "a.bin", DATA))

    with store.get_range("k/a.bin", chunk_size=1024) as stream:
        chunks = list(stream)

    assert b"".join(chunks) == DATA
    assert max(len(c) for c in chunks) <= 1024


def test_missing_key_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.stat("nope/archive.zip")
    with pytest.raises(NotFound):
        store.get_range("nope/archive.zip")
    with pytest.raises(NotFound):
        store.presigned_get_url("nope/archive.zip", 60)
    assert not store.exists("nope/archive.zip")


def test_delete_removes_the_object_and_tolerates_a_missing_key(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.put_file("k/a.bin", write(tmp_path, "a.bin", DATA))
    store.delete("k/a.bin")
    store.delete("k/a.bin")

    assert not store.exists("k/a.bin")


def test_put_replaces_an_existing_object(store: ObjectStore, tmp_path: Path) -> None:
    store.put_file("k/a.bin", write(tmp_path, "a.bin", DATA))
    store.put_file("k/a.bin", write(tmp_path, "b.bin", b"second"))

    assert store.get_range("k/a.bin").read_all() == b"second"


def test_list_returns_objects_under_a_prefix_in_key_order(
    store: ObjectStore, tmp_path: Path
) -> None:
    src = write(tmp_path, "a.bin", b"x")
    for key in ["exports/b/2.zip", "exports/a/1.zip", "exports/ab.zip", "other/c.zip"]:
        store.put_file(key, src)

    assert [o.key for o in store.list("exports/a")] == ["exports/a/1.zip", "exports/ab.zip"]
    assert [o.key for o in store.list()] == [
        "exports/a/1.zip",
        "exports/ab.zip",
        "exports/b/2.zip",
        "other/c.zip",
    ]
    assert all(o.size == 1 for o in store.list())


def test_presigned_url_downloads_the_bytes_until_it_expires(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.put_file("k/a.bin", write(tmp_path, "a.bin", DATA))
    before = datetime.now(UTC)

    url, expires_at = store.presigned_get_url("k/a.bin", expiry_seconds=600)

    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == DATA
    assert before + timedelta(seconds=598) <= expires_at <= before + timedelta(seconds=602)


def test_presigned_expiry_longer_than_seven_days_is_refused(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.put_file("k/a.bin", write(tmp_path, "a.bin", DATA))

    with pytest.raises(InvalidArgument):
        store.presigned_get_url("k/a.bin", expiry_seconds=8 * 24 * 3600)


@pytest.mark.parametrize("key", ["", "/abs.zip", "a/../b.zip", "a//b.zip", "a\\b.zip", ".tmp/x"])
def test_keys_that_could_escape_the_store_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidArgument):
        store.stat(key)


def test_a_listing_prefix_cannot_climb_out_of_the_store(store: ObjectStore) -> None:
    with pytest.raises(InvalidArgument):
        store.list("../")


def test_upload_reports_progress_up_to_the_file_size(store: ObjectStore, big_file: Path) -> None:
    seen: list[tuple[int, int]] = []

    store.put_file("k/big.bin", big_file, progress=lambda done, total: seen.append((done, total)))

    size = big_file.stat().st_size
    assert seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
