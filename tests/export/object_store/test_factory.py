"""object_store_from_url: one settings string picks and configures the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_export.object_store import LocalObjectStore, object_store_from_url
from mistudio_export.object_store.s3 import S3ObjectStore


def test_file_url_gives_a_folder_store(tmp_path: Path) -> None:
    store = object_store_from_url((tmp_path / "archives").as_uri())

    assert isinstance(store, LocalObjectStore)
    assert store.root == tmp_path / "archives"


def test_empty_url_falls_back_to_the_default_folder(tmp_path: Path) -> None:
    store = object_store_from_url("", default_root=tmp_path / "archives")

    assert isinstance(store, LocalObjectStore)


def test_s3_url_gives_a_bucket_store_with_its_options() -> None:
    store = object_store_from_url(
        "s3://exports?endpoint=minio:9000&secure=false&part_size=8388608"
        "&public_endpoint=localhost:9000&region=us-east-1",
        "key",
        "secret",
    )

    assert isinstance(store, S3ObjectStore)
    assert (store.bucket, store.endpoint, store.part_size) == ("exports", "minio:9000", 8388608)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://example.org/x",
        "file://relative/path",
        "s3://bucket",
        "s3://?endpoint=h:1",
        "s3://bucket/sub?endpoint=h:1",
        "s3://bucket?endpoint=h:1&secure=maybe",
        "s3://bucket?endpoint=h:1&tls=false",
        "s3://bucket?endpoint=h:1&part_size=big",
    ],
)
def test_malformed_urls_are_refused_with_the_accepted_forms(url: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        object_store_from_url(url)
    assert "s3://bucket?endpoint=" in err.value.fix


def test_an_s3_url_store_works_against_a_real_server(s3_endpoint: str, tmp_path: Path) -> None:
    # No region in the URL: the SDK asks the server, as it would with the deploy stack's MinIO.
    store = object_store_from_url(f"s3://from-url?endpoint={s3_endpoint}&secure=false", "a", "b")
    (tmp_path / "a.txt").write_bytes(b"hello")

    store.put_file("exports/a.txt", tmp_path / "a.txt")

    assert store.get_range("exports/a.txt", offset=1).read_all() == b"ello"
