"""Downloading through the gateway when archives live in S3 (moto on loopback): a redirect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.export.service.stack import Stack, register_sae, start_stack, write_sae_folder
from tests.export.service.test_s3_export import Moto
from tests.gateway.server import running_gateway
from tests.gateway.sse import follow, start_body

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_stack(workdir: Path) -> Iterator[Stack]:
    moto = Moto()
    url = f"s3://exports?endpoint={moto.endpoint}&secure=false&region=us-east-1"
    running = start_stack(workdir / "s3-data", url, ("test-access", "test-secret"))
    yield running
    running.stop()
    moto.stop()


def test_download_redirects_to_the_presigned_url_of_the_archive(
    s3_stack: Stack, workdir: Path, tokens
) -> None:
    sae_id = register_sae(s3_stack, "s3-sae", str(write_sae_folder(workdir / "s3-sae"))).sae_id
    with (
        running_gateway(s3_stack.export.address) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        started = client.post(
            f"/api/v1/saes/{sae_id}/export/neuronpedia", json=start_body(tokens, "s3-1")
        )
        links = started.json()["links"]
        assert follow(client, links["events"])[-1].data["progress"]["state"] == (
            "JOB_STATE_SUCCEEDED"
        )
        redirect = client.get(links["download"], params={"expiry_seconds": 600})
        streamed = client.get(links["download"], params={"stream": "true"})
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith("http://127.0.0.1:") and "X-Amz-Signature" in location
    assert httpx.get(location).content == streamed.content
    assert streamed.content.startswith(b"PK")
