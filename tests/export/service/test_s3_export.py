"""An export published to an S3 bucket (moto on loopback) and fetched through a presigned URL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from urllib.request import urlopen

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from moto.server import ThreadedMotoServer

from tests.export.service.stack import Stack, export_config, run_to_end, start_stack


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def stack(workdir: Path, s3_endpoint: str) -> Iterator[Stack]:
    url = f"s3://exports?endpoint={s3_endpoint}&secure=false&region=us-east-1"
    running = start_stack(workdir / "data", url, ("test-access", "test-secret"))
    yield running
    running.stop()


def test_archive_is_published_to_s3_and_fetched_by_presigned_url(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(sae_id=sae_id, config=export_config(tokens))
    last = run_to_end(stack.exports.StartExport(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    job_id = last.progress.job_id
    assert not (stack.data_dir / "archives").exists()
    link = stack.exports.GetDownloadUrl(
        epb.GetDownloadUrlRequest(job_id=job_id, expiry_seconds=120)
    )
    with urlopen(link.url, timeout=30) as response:
        fetched = response.read()
    assert hashlib.sha256(fetched).hexdigest() == last.result.archive_sha256
    streamed = b"".join(
        m.chunk for m in stack.exports.DownloadExport(epb.DownloadExportRequest(job_id=job_id))
    )
    assert streamed == fetched
