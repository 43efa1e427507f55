"""Builds the store server: migrate the schema, wire the repository, serve with health."""

from __future__ import annotations

import logging

from mistudio.store.v1 import store_service_pb2, store_service_pb2_grpc
from mistudio_common.auth import load_credentials
from mistudio_common.dependencies import Dependency, DependencyMonitor
from mistudio_common.server import RunningServer, ServiceRegistration, create_server
from sqlalchemy.engine import make_url

from mistudio_store.config import StoreSettings
from mistudio_store.db import migrate
from mistudio_store.db.engine import SessionFactories, create_store_engine
from mistudio_store.repository import StoreRepository
from mistudio_store.servicer import StoreServicer

SERVICE_NAME = store_service_pb2.DESCRIPTOR.services_by_name["StoreService"].full_name
USER_METHODS = frozenset(
    {"CreateSae", "GetSae", "ListSaes", "ListFeatures", "AddExplanations", "ListExplanations"}
)
"""What a user may call directly (on its own SAEs: the CLI registers SAEs this way); every
other RPC writes jobs, caches or deletes, and is only for the export and compute services."""
SERVICE_ONLY_METHODS = (
    frozenset(store_service_pb2.DESCRIPTOR.services_by_name["StoreService"].methods_by_name)
    - USER_METHODS
)

log = logging.getLogger(__name__)


def build_repository(settings: StoreSettings) -> StoreRepository:
    """A migrated database behind a repository (in-process use, without gRPC)."""
    engine = create_store_engine(settings.database_url, pool_size=settings.max_workers)
    migrate.upgrade(engine)
    log.info(
        "database ready",
        extra={"database": make_url(settings.database_url).render_as_string(hide_password=True)},
    )
    return StoreRepository(
        SessionFactories(engine),
        default_page_size=settings.default_page_size,
        max_page_size=settings.max_page_size,
        dashboard_batch=settings.dashboard_stream_batch,
    )


def build_store_server(settings: StoreSettings) -> RunningServer:
    """Starts the store on settings.host:settings.port (port 0 picks a free one)."""
    repository = build_repository(settings)
    servicer = StoreServicer(repository)
    registration = ServiceRegistration(
        SERVICE_NAME,
        lambda server: store_service_pb2_grpc.add_StoreServiceServicer_to_server(servicer, server),
        service_only=SERVICE_ONLY_METHODS,
    )
    running = create_server(
        f"{settings.host}:{settings.port}",
        [registration],
        load_credentials(settings),
        max_workers=settings.max_workers,
    )
    monitor = DependencyMonitor(
        running.health,
        [SERVICE_NAME],
        [Dependency("database", repository.ping)],
        settings.health_check_seconds,
    )
    monitor.start()
    running.on_stop.extend([monitor.stop, repository.close])
    return running
