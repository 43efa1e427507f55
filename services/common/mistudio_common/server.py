"""Building and running a gRPC server the same way for every service.

Building is separate from serving so tests can bind port 0 on loopback and talk to the real
server; every server registers health checking and reflection.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Dashboards of 128 features with 100 examples each stay well under this."""

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class ServiceRegistration:
    """A servicer to mount: its full proto service name and the generated add function."""

    service_name: str
    add_to_server: Callable[[grpc.Server], None]


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    on_stop: list[Callable[[], None]] = field(default_factory=list, kw_only=True)
    """Run after the server has stopped: close database pools, flush files (keyword-only, so
    subclasses may still add fields without defaults)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace_seconds: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_seconds).wait()
        for callback in self.on_stop:
            callback()


def create_server(
    address: str, registrations: Sequence[ServiceRegistration], max_workers: int = 32
) -> RunningServer:
    """Builds and starts a server with health and reflection; ``address`` may use port 0."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), options=CHANNEL_OPTIONS
    )
    for registration in registrations:
        registration.add_to_server(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [r.service_name for r in registrations]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}: is the port already in use?")
    server.start()
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving", extra={"address": address, "port": port, "services": names})
    return RunningServer(server=server, port=port, health=health_servicer)


def serve_until_signal(running: RunningServer, on_stop: Callable[[], None] | None = None) -> None:
    """Blocks until SIGINT/SIGTERM, then stops gracefully (in-flight calls get a grace period)."""
    stopped = threading.Event()

    def _handle(signum: int, _frame: object) -> None:
        log.info("stopping", extra={"signal": signum})
        stopped.set()

    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    stopped.wait()
    if on_stop is not None:
        on_stop()
    running.stop()


def insecure_channel(address: str) -> grpc.Channel:
    """A client channel with the same message limits as the servers."""
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
