"""An export published to an S3 bucket (moto on loopback) and fetched through a presigned URL."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.request import urlopen

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from moto.server import ThreadedMotoServer

from tests.export.service.stack import Stack, export_config, run_to_end, start_stack


class Moto:
    """A moto S3 server on a loopback port that can go away and come back on the same port."""

    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.endpoint = f"{host}:{self.port}"

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """Starts a new server on the same port and waits until it accepts connections."""
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    server = Moto()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(workdir: Path, moto: Moto) -> Iterator[Stack]:
    url = f"s3://exports?endpoint={moto.endpoint}&secure=false&region=us-east-1"
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


def test_an_unwritable_bucket_fails_the_job_before_it_computes_and_resume_finishes_it(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, moto: Moto
) -> None:
    moto.stop()
    try:
        request = epb.StartExportRequest(sae_id=sae_id, config=export_config(tokens))
        messages = run_to_end(stack.exports.StartExport(request))
    finally:
        moto.restart()
    failed = messages[-1]
    job_id = failed.progress.job_id
    assert failed.progress.state == ppb.JOB_STATE_FAILED
    assert failed.progress.stage == ppb.STAGE_VALIDATING
    assert "object store" in failed.progress.error.message
    assert ppb.STAGE_ACTIVATION_PASS not in {m.progress.stage for m in messages}
    stack.exports.ResumeExport(epb.ResumeExportRequest(job_id=job_id))
    messages = run_to_end(stack.exports.WatchExport(epb.WatchExportRequest(job_id=job_id)))
    last = messages[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    assert not (stack.data_dir / "export" / job_id).exists()
