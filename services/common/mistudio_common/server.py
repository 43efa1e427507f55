"""Building and running a gRPC server the same way for every service.

Building is separate from serving so tests can bind port 0 on loopback and talk to the real
server; every server registers health checking and reflection, and authenticates every other
call (``mistudio_common.auth``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mistudio_common.auth import Credentials, PeerCredentials, ServerTls, check_bind
from mistudio_common.auth_interceptor import AuthInterceptor

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
    service_only: frozenset[str] = frozenset()
    """Method names (e.g. ``UpdateExportJob``) only service identities may call."""

    def service_only_paths(self) -> frozenset[str]:
        return frozenset(f"/{self.service_name}/{method}" for method in self.service_only)


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
    address: str,
    registrations: Sequence[ServiceRegistration],
    credentials: Credentials,
    max_workers: int = 32,
) -> RunningServer:
    """Builds and starts a server with health and reflection; ``address`` may use port 0.

    Without credentials it refuses any address but loopback (the local no-setup mode).
    """
    check_bind(address.rsplit(":", 1)[0], credentials)
    service_only = frozenset().union(*(r.service_only_paths() for r in registrations))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[AuthInterceptor(credentials, service_only)],
        options=CHANNEL_OPTIONS,
    )
    for registration in registrations:
        registration.add_to_server(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [r.service_name for r in registrations]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    if credentials.tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_tls(credentials.tls, credentials))
    if port == 0:
        raise OSError(f"could not bind {address}: is the port already in use?")
    server.start()
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        extra={"address": address, "port": port, "services": names, "tls": bool(credentials.tls)},
    )
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


def server_tls(tls: ServerTls, credentials: Credentials) -> grpc.ServerCredentials:
    """Client certificates are checked against the CA; required only when no token would do."""
    return grpc.ssl_server_credentials(
        [(tls.key, tls.cert)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None and not credentials.tokens,
    )


def insecure_channel(address: str) -> grpc.Channel:
    """A client channel with the same message limits as the servers."""
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def open_channel(address: str, peer: PeerCredentials) -> grpc.Channel:
    """A client channel presenting ``peer``'s token and certificate (plaintext when it has none)."""
    if peer.ca is None and peer.cert is None:
        channel = insecure_channel(address)
    else:
        tls = grpc.ssl_channel_credentials(
            root_certificates=peer.ca, private_key=peer.key, certificate_chain=peer.cert
        )
        channel = grpc.secure_channel(address, tls, options=CHANNEL_OPTIONS)
    if not peer.token:
        return channel
    return grpc.intercept_channel(channel, _BearerToken(peer.token))


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call (also over plaintext loopback)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready, details.compression,
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None
