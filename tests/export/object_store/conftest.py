"""A real S3-protocol server (moto) on a loopback port, and stores of both kinds over it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mistudio_export.object_store import LocalObjectStore, ObjectStore
from mistudio_export.object_store.s3 import S3ObjectStore

from tests.moto_s3 import ACCESS_KEY, SECRET_KEY, moto_server

PART_SIZE = 5 * 1024 * 1024
"""S3's minimum part size, so an 11 MiB file takes three parts."""


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


def new_s3_store(endpoint: str, bucket: str | None = None) -> S3ObjectStore:
    return S3ObjectStore(
        endpoint,
        ACCESS_KEY,
        SECRET_KEY,
        bucket or f"test-{uuid.uuid4().hex[:12]}",
        secure=False,
        region="us-east-1",
        part_size=PART_SIZE,
    )


@pytest.fixture
def s3_store(s3_endpoint: str) -> S3ObjectStore:
    return new_s3_store(s3_endpoint)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    return new_s3_store(request.getfixturevalue("s3_endpoint"))


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 11 MiB of incompressible bytes: larger than two parts, not a multiple of one."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    path.write_bytes(os.urandom(11 * 1024 * 1024 + 12345))
    return path


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path
