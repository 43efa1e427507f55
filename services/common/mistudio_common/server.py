"""Building and running a gRPC server the same way for every service.

Building is separate from serving so tests can bind port 0 on loopback and talk to the real
server; every server registers health checking and reflection, authenticates every other call
(``mistudio_common.auth``) and refuses a port that another process already serves (no
SO_REUSEPORT: two stores on one port would split the traffic). The export service runs a
``grpc.aio`` server (:func:`create_aio_server`) so that its many long-lived watch streams hold
no worker thread; store and compute use the threaded server.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mistudio_common.auth import Credentials, PeerCredentials, ServerTls, check_bind
from mistudio_common.auth_interceptor import AioAuthInterceptor, AuthInterceptor
from mistudio_common.errors import Unavailable
from mistudio_common.stop_signal import StopWait

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Dashboards of 128 features with 100 examples each stay well under this."""

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
SERVER_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]
PEER_RECONNECT_MAX_MS = 2000
CLIENT_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", PEER_RECONNECT_MAX_MS),
]
"""A restarted peer is found again within two seconds (gRPC's default backoff reaches 120 s),
so a call waiting for it (wait_for_ready) goes through soon after it is back."""

T = TypeVar("T")


class PortInUse(OSError):
    """The listening address is already bound by another process (or cannot be bound)."""


@dataclass(frozen=True)
class ServiceRegistration:
    """A servicer to mount: its full proto service name and the generated add function."""

    service_name: str
    add_to_server: Callable[[Any], None]
    """Called with a ``grpc.Server`` or a ``grpc.aio.Server``; generated add functions take both."""
    service_only: frozenset[str] = frozenset()
    """Method names (e.g. ``UpdateExportJob``) only service identities may call."""

    def service_only_paths(self) -> frozenset[str]:
        return frozenset(f"/{self.service_name}/{method}" for method in self.service_only)


class ServerHandle(Protocol):
    def stop(self, grace: float | None) -> threading.Event: ...


class HealthControl(Protocol):
    """What the services change on their health servicer (sync or asyncio)."""

    def set(self, service: str, status: int) -> None: ...

    def enter_graceful_shutdown(self) -> None: ...


@dataclass
class RunningServer:
    server: ServerHandle
    port: int
    health: HealthControl
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
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[AuthInterceptor(credentials, _service_only(registrations))],
        options=SERVER_OPTIONS,
    )
    health_servicer = health.HealthServicer()
    names = _mount(server, registrations, health_servicer)
    port = bind(server, address, credentials)
    server.start()
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _log_serving(address, port, names, credentials)
    return RunningServer(server=server, port=port, health=health_servicer)


def _service_only(registrations: Sequence[ServiceRegistration]) -> frozenset[str]:
    return frozenset().union(*(r.service_only_paths() for r in registrations))


def _log_serving(address: str, port: int, names: list[str], credentials: Credentials) -> None:
    log.info(
        "serving",
        extra={"address": address, "port": port, "services": names, "tls": bool(credentials.tls)},
    )


def _mount(
    server: grpc.Server | grpc.aio.Server,
    registrations: Sequence[ServiceRegistration],
    health_servicer: health.HealthServicer | health.aio.HealthServicer,
) -> list[str]:
    for registration in registrations:
        registration.add_to_server(server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [r.service_name for r in registrations]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return names


def bind(server: grpc.Server | grpc.aio.Server, address: str, credentials: Credentials) -> int:
    """Binds ``address`` exclusively; :class:`PortInUse` when another process holds it."""
    try:
        if credentials.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, server_tls(credentials.tls, credentials))
    except RuntimeError as error:
        port = 0
        cause: BaseException | None = error
    else:
        cause = None
    if port == 0:
        raise PortInUse(
            f"cannot listen on {address}: the port is in use (another instance may already be "
            "running there); stop it or choose another --port"
        ) from cause
    return port


class LoopThread:
    """An asyncio event loop on its own daemon thread, driven from synchronous code."""

    def __init__(self, name: str, executor_workers: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(
            futures.ThreadPoolExecutor(executor_workers, thread_name_prefix=f"{name}-work")
        )
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


class _AioHandle:
    """The synchronous face of an aio server: stop() waits for it and ends its loop."""

    def __init__(self, server: grpc.aio.Server, loop: LoopThread) -> None:
        self._server = server
        self._loop = loop

    def stop(self, grace: float | None) -> threading.Event:
        self._loop.run(self._server.stop(grace))
        self._loop.close()
        stopped = threading.Event()
        stopped.set()
        return stopped


class _AioHealth:
    """Sets the asyncio health servicer's statuses from any thread."""

    def __init__(self, servicer: health.aio.HealthServicer, loop: LoopThread) -> None:
        self._servicer = servicer
        self._loop = loop

    def set(self, service: str, status: int) -> None:
        self._loop.run(self._servicer.set(service, status))

    def enter_graceful_shutdown(self) -> None:
        self._loop.run(self._servicer.enter_graceful_shutdown())


def create_aio_server(
    address: str,
    registrations: Sequence[ServiceRegistration],
    credentials: Credentials,
    *,
    executor_workers: int = 16,
    name: str = "grpc-aio",
) -> tuple[RunningServer, LoopThread]:
    """Like :func:`create_server` for ``async def`` servicers, served on a :class:`LoopThread`.

    Handlers run on the loop; blocking domain work goes to the loop's default executor
    (``asyncio.to_thread``), which has ``executor_workers`` threads.
    """
    check_bind(address.rsplit(":", 1)[0], credentials)
    loop = LoopThread(name, executor_workers)

    async def start() -> tuple[grpc.aio.Server, health.aio.HealthServicer, int, list[str]]:
        interceptor = AioAuthInterceptor(credentials, _service_only(registrations))
        server = grpc.aio.server(interceptors=[interceptor], options=SERVER_OPTIONS)
        health_servicer = health.aio.HealthServicer()
        names = _mount(server, registrations, health_servicer)
        port = bind(server, address, credentials)
        await server.start()
        for service in ["", *names]:
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        return server, health_servicer, port, names

    try:
        server, health_servicer, port, names = loop.run(start())
    except BaseException:
        loop.close()
        raise
    _log_serving(address, port, names, credentials)
    running = RunningServer(
        server=_AioHandle(server, loop), port=port, health=_AioHealth(health_servicer, loop)
    )
    return running, loop


def serve_until_signal(running: RunningServer, on_stop: Callable[[], None] | None = None) -> None:
    """Blocks until SIGINT/SIGTERM, then stops gracefully (in-flight calls get a grace period)."""
    heard = StopWait([signal.SIGINT, signal.SIGTERM]).wait()
    log.info("stopping", extra={"signal": heard and heard.name})
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
    return grpc.insecure_channel(address, options=CLIENT_OPTIONS)


def wait_until_ready(channel: grpc.Channel, seconds: float, peer: str) -> None:
    """Blocks until ``channel`` has connected: a long stream opens only once its peer is up.
    Unavailable naming ``peer`` when it stays unreachable for ``seconds``."""
    try:
        grpc.channel_ready_future(channel).result(timeout=seconds)
    except grpc.FutureTimeoutError:
        raise Unavailable(
            f"the {peer} stayed unreachable for {seconds:g} s",
            fix=f"start the {peer} (or check its address); the job resumes by itself",
        ) from None


def open_channel(address: str, peer: PeerCredentials) -> grpc.Channel:
    """A client channel presenting ``peer``'s token and certificate (plaintext when it has none)."""
    if peer.ca is None and peer.cert is None:
        channel = insecure_channel(address)
    else:
        tls = grpc.ssl_channel_credentials(
            root_certificates=peer.ca, private_key=peer.key, certificate_chain=peer.cert
        )
        channel = grpc.secure_channel(address, tls, options=CLIENT_OPTIONS)
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
