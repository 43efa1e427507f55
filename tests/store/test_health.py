"""The store's health follows its database: NOT_SERVING while PostgreSQL is down, SERVING again
once it is back. The database is a private cluster (initdb + pg_ctl on a free port), never the
shared server."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mistudio_common.healthcheck import check
from mistudio_store.server import SERVICE_NAME, build_store_server

from tests.store.conftest import settings_for

pytestmark = pytest.mark.slow

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


class PrivateCluster:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def pg(self, *args: str, check: bool = True) -> None:
        command = [f"{BIN[-1]}/{args[0]}", *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=check, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        log = str(self.folder / "server.log")  # not our pipes: pg_ctl returns once it is up
        self.pg("pg_ctl", "-D", str(self.folder / "data"), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        self.pg("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    if not BIN or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.skip("no PostgreSQL binaries to start a private cluster with")
    folder = Path(tempfile.mkdtemp(prefix="mistudio-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    running = PrivateCluster(folder, port)
    running.pg("initdb", "-D", str(folder / "data"), "--auth=trust", "-U", "postgres")
    try:
        running.start()
        yield running
    finally:
        running.pg("pg_ctl", "-D", str(folder / "data"), "-m", "immediate", "stop", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def health_becomes(address: str, serving: bool, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check(address, SERVICE_NAME, timeout=1.0) == serving:
            return True
        time.sleep(0.2)
    return False


def test_store_is_not_serving_while_its_database_is_down_and_serving_once_it_is_back(
    cluster: PrivateCluster,
) -> None:
    store = build_store_server(settings_for(cluster.url, health_check_seconds=0.2))
    try:
        assert health_becomes(store.address, serving=True)
        cluster.stop()
        assert health_becomes(store.address, serving=False)
        cluster.start()
        assert health_becomes(store.address, serving=True)
    finally:
        store.stop(grace_seconds=0)
