"""Health follows dependencies: NOT_SERVING while a probe fails, SERVING once it passes again."""

from __future__ import annotations

from mistudio_common.auth import Credentials, PeerCredentials
from mistudio_common.dependencies import Dependency, DependencyMonitor, peer
from mistudio_common.healthcheck import check
from mistudio_common.server import create_server

LOCAL = Credentials(identities={}, tokens={}, tls=None, peer=PeerCredentials())
"""No credentials: the loopback, no-setup mode."""


def test_health_is_not_serving_while_a_dependency_is_down_and_serving_when_it_is_back() -> None:
    running = create_server("127.0.0.1:0", [], LOCAL)
    database_up = [True]

    def ping() -> None:
        if not database_up[0]:
            raise ConnectionError("connection refused")

    monitor = DependencyMonitor(running.health, ["x.v1.X"], [Dependency("database", ping)], 60)
    try:
        database_up[0] = False
        assert monitor.check_once() == ["database"]
        assert not check(running.address) and not check(running.address, "x.v1.X")
        database_up[0] = True
        assert monitor.check_once() == []
        assert check(running.address) and check(running.address, "x.v1.X")
    finally:
        running.stop(0)


def test_a_peer_is_down_when_nothing_serves_its_address() -> None:
    peer_server = create_server("127.0.0.1:0", [], LOCAL)
    address = peer_server.address
    running = create_server("127.0.0.1:0", [], LOCAL)
    monitor = DependencyMonitor(running.health, [], [peer("store", address)], 60)
    try:
        assert monitor.check_once() == []
        peer_server.stop(0)
        assert monitor.check_once() == ["store"]
        assert not check(running.address)
    finally:
        running.stop(0)
