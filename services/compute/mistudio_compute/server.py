"""Builds the compute gRPC server: servicer, job manager and store client wired together.

Tests call :func:`build_compute_server` on port 0; ``__main__`` calls it with the configured
address and serves until a signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mistudio.compute.v1 import compute_service_pb2, compute_service_pb2_grpc
from mistudio_common.auth import load_credentials
from mistudio_common.dependencies import DependencyMonitor, peer
from mistudio_common.retry import PeerWait
from mistudio_common.server import RunningServer, ServiceRegistration, create_server

from mistudio_compute.config import ComputeSettings
from mistudio_compute.jobs import ComputeJobManager
from mistudio_compute.planning import ModelLoader, Planner
from mistudio_compute.servicer import ComputeServicer
from mistudio_compute.store_client import StoreClient

SERVICE_NAME = compute_service_pb2.DESCRIPTOR.services_by_name["ComputeService"].full_name
USER_METHODS = frozenset({"ValidateSae", "ResolveHookPoint"})
"""What a user may call directly (the CLI checks an SAE folder before registering it); the
computations themselves are started, watched and controlled only by the export service."""
SERVICE_ONLY_METHODS = (
    frozenset(compute_service_pb2.DESCRIPTOR.services_by_name["ComputeService"].methods_by_name)
    - USER_METHODS
)


@dataclass
class ComputeServer(RunningServer):
    """A running compute server; stopping it first parks running jobs at a checkpoint."""

    manager: ComputeJobManager = field(kw_only=True)

    def stop(self, grace_seconds: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.manager.shutdown()
        super().stop(grace_seconds)


def build_compute_server(
    settings: ComputeSettings, *, model_loader: ModelLoader | None = None
) -> ComputeServer:
    """Starts the server on settings.host:settings.port and resumes unfinished jobs.

    ``model_loader`` replaces ``model_access.load_model`` (tests serve tiny in-memory models).
    """
    credentials = load_credentials(settings)
    wait = PeerWait(patience_seconds=settings.fault_patience_seconds)
    store = StoreClient(settings.store_address, credentials.peer, wait)
    planner = Planner(settings, store, model_loader)
    manager = ComputeJobManager(settings, planner, store)
    servicer = ComputeServicer(manager, planner)
    registration = ServiceRegistration(
        SERVICE_NAME,
        lambda server: compute_service_pb2_grpc.add_ComputeServiceServicer_to_server(
            servicer, server
        ),
        service_only=SERVICE_ONLY_METHODS,
    )
    running = create_server(
        f"{settings.host}:{settings.port}",
        [registration],
        credentials,
        max_workers=settings.max_workers,
    )
    manager.resume_unfinished()
    monitor = DependencyMonitor(
        running.health,
        [SERVICE_NAME],
        [peer("store", settings.store_address, credentials.peer)],
        settings.health_check_seconds,
    )
    monitor.start()
    return ComputeServer(
        server=running.server,
        port=running.port,
        health=running.health,
        on_stop=[monitor.stop, store.close],
        manager=manager,
    )
