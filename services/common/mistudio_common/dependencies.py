"""Health that reflects dependencies: a service is NOT_SERVING while one it needs is down.

Each service lists probes (the store pings its database; export checks the store, compute and
that the bucket takes writes; compute checks the store). A background thread runs them at an
interval and sets the health status of the whole server and of each of its services.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from grpc_health.v1 import health_pb2

from mistudio_common.auth import LOOPBACK_PEER, PeerCredentials
from mistudio_common.healthcheck import check
from mistudio_common.server import HealthControl

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PEER_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Dependency:
    """Something the service needs; ``probe`` raises (or returns False) when it is down."""

    name: str
    probe: Callable[[], bool | None]


def peer(name: str, address: str, credentials: PeerCredentials = LOOPBACK_PEER) -> Dependency:
    """Another of our services, healthy when its own health check says SERVING."""
    return Dependency(name, lambda: check(address, timeout=PEER_TIMEOUT_SECONDS, peer=credentials))


class DependencyMonitor:
    """Sets ``health`` to SERVING only while every dependency's probe passes."""

    def __init__(
        self,
        health: HealthControl,
        services: Sequence[str],
        dependencies: Sequence[Dependency],
        interval_seconds: float,
    ) -> None:
        self._health = health
        self._services = ["", *services]
        self._dependencies = list(dependencies)
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down: list[str] = []

    def check_once(self) -> list[str]:
        """Runs every probe, updates the health status and returns the names that are down."""
        down = [d.name for d in self._dependencies if not _passes(d)]
        if down != self._down:
            log.warning("dependencies down" if down else "dependencies back", extra={"down": down})
        self._down = down
        status = NOT_SERVING if down else SERVING
        for service in self._services:
            self._health.set(service, status)
        return down

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dependency-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=PEER_TIMEOUT_SECONDS * 4)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self._interval)


def _passes(dependency: Dependency) -> bool:
    try:
        return dependency.probe() is not False
    except Exception as error:  # any failure means "down"; the reason goes to the log
        log.info(
            "dependency probe failed", extra={"dependency": dependency.name, "error": str(error)}
        )
        return False
