"""A real S3-protocol server (moto) on a loopback port, for the suites that need a bucket."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

ACCESS_KEY = "test-access"
SECRET_KEY = "test-secret"


@contextmanager
def moto_server() -> Iterator[str]:
    """Yields the server's host:port until the block ends."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


def bucket_url(endpoint: str, bucket: str) -> str:
    """The object store setting of a bucket on ``endpoint`` (export's and compute's)."""
    return f"s3://{bucket}?endpoint={endpoint}&secure=false&region=us-east-1"
