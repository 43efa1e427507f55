"""Server bootstrap: a service refuses a port that another instance already serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mistudio_common.auth import Credentials, PeerCredentials
from mistudio_common.healthcheck import check
from mistudio_common.server import PortInUse, create_aio_server, create_server

LOCAL = Credentials(identities={}, tokens={}, tls=None, peer=PeerCredentials())
"""No credentials: the loopback, no-setup mode."""


def test_threaded_server_refuses_a_port_another_server_holds() -> None:
    first = create_server("127.0.0.1:0", [], LOCAL)
    try:
        with pytest.raises(PortInUse, match=f"127.0.0.1:{first.port}.*in use"):
            create_server(f"127.0.0.1:{first.port}", [], LOCAL)
        assert check(first.address)
    finally:
        first.stop(0)


def test_asyncio_server_refuses_a_port_another_server_holds() -> None:
    first = create_server("127.0.0.1:0", [], LOCAL)
    try:
        with pytest.raises(PortInUse, match="in use"):
            create_aio_server(f"127.0.0.1:{first.port}", [], LOCAL)
    finally:
        first.stop(0)


def test_asyncio_server_serves_health_and_stops() -> None:
    running, _ = create_aio_server("127.0.0.1:0", [], LOCAL)
    assert check(running.address)
    running.stop(0)
    assert not check(running.address, timeout=0.5)


def test_service_command_exits_with_a_clear_message_when_its_port_is_in_use(
    tmp_path: Path,
) -> None:
    first = create_server("127.0.0.1:0", [], LOCAL)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mistudio_store", "--port", str(first.port)],
            env={**os.environ, "MISTUDIO_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        first.stop(0)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}: the port is in use" in result.stderr
