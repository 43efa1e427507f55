"""An export published to an S3 bucket (moto on loopback) and fetched through a presigned URL."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.request import Request, urlopen

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from moto.server import ThreadedMotoServer

from tests.export.service.stack import (
    Stack,
    export_config,
    removed,
    run_to_end,
    start_stack,
    wait_for,
)


class Moto:
    """A moto S3 server on a loopback port that can go away and come back on the same port."""

    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, self.port = self.server.get_host_and_port()
        self.endpoint = f"{host}:{self.port}"

    @property
    def running(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.server.stop()

    def forget_everything(self) -> None:
        """Like a fresh S3 server: every bucket and object is gone."""
        urlopen(Request(f"http://{self.endpoint}/moto-api/reset", method="POST")).close()

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
    assert removed(stack.data_dir / "export" / job_id)


def test_an_export_waits_out_an_object_store_outage_and_a_lost_bucket(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, moto: Moto
) -> None:
    """The S3 server goes away while an export publishes and comes back empty: the export
    carries on by itself, makes the bucket again and publishes, with no client action."""
    stack.restart_export(fault_patience_seconds=60.0)
    request = epb.StartExportRequest(sae_id=sae_id, config=export_config(tokens))
    try:
        first = run_to_end(stack.exports.StartExport(request))[-1]
        assert first.progress.state == ppb.JOB_STATE_SUCCEEDED  # the bucket is known to exist
        moto.stop()
        stream = stack.exports.StartExport(request)
        waiting = wait_for(stream, lambda m: "waiting for a fault" in m.progress.message)
        moto.restart()
        moto.forget_everything()
        messages = run_to_end(stream)
    finally:
        if not moto.running:
            moto.restart()
        stack.restart_export(fault_patience_seconds=2.0)
    last = messages[-1]
    assert waiting.progress.state == ppb.JOB_STATE_RUNNING
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    view = stack.exports.GetExport(epb.GetExportRequest(job_id=last.progress.job_id))
    assert view.job.progress.state == ppb.JOB_STATE_SUCCEEDED
    download = epb.DownloadExportRequest(job_id=last.progress.job_id)
    fetched = b"".join(m.chunk for m in stack.exports.DownloadExport(download))
    assert hashlib.sha256(fetched).hexdigest() == last.result.archive_sha256
