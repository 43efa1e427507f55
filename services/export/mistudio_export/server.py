"""Builds the export gRPC server: clients of store and compute, the object store, the jobs.

Tests call :func:`build_export_server` on port 0; ``__main__`` calls it with the configured
address and serves until a signal. Building it resumes the jobs a previous run left RUNNING.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio_common.auth import load_credentials
from mistudio_common.dependencies import Dependency, DependencyMonitor, peer
from mistudio_common.retention import FolderSweeper
from mistudio_common.retry import PeerWait
from mistudio_common.server import RunningServer, ServiceRegistration, create_aio_server

from mistudio_export.checking import ArchiveValidator
from mistudio_export.clients import ComputeClient, StoreClient
from mistudio_export.config import ExportSettings
from mistudio_export.estimate import ExportEstimator
from mistudio_export.feature_dashboards import FeatureDashboards
from mistudio_export.jobs import ExportJobManager
from mistudio_export.object_store import ObjectStore, check_writable, object_store_from_url
from mistudio_export.pipeline import ExportPipeline
from mistudio_export.preflight import Planner
from mistudio_export.servicer import ExportServicer
from mistudio_export.uploads import Uploads
from mistudio_export.worker_pool import WorkerPool

SERVICE_NAME = "mistudio.export.v1.ExportService"


@dataclass
class ExportServer(RunningServer):
    """A running export server; stopping it first parks its jobs at a checkpoint."""

    manager: ExportJobManager
    store: StoreClient
    compute: ComputeClient
    objects: ObjectStore
    monitor: DependencyMonitor

    def stop(self, grace_seconds: float = 5.0) -> None:
        self.monitor.stop()  # before the event loop that serves health checks ends
        self.health.enter_graceful_shutdown()
        self.manager.shutdown()
        super().stop(grace_seconds)


def object_store_for(settings: ExportSettings) -> ObjectStore:
    return object_store_from_url(
        settings.object_store_url,
        settings.s3_access_key,
        settings.s3_secret_key,
        default_root=(settings.data_dir / "archives").resolve(),
    )


def instance_id(data_dir: Path) -> str:
    """This instance's lease holder id, kept in its data directory: a restarted service takes
    its own jobs back at once, and a second service (with its own data directory) waits for
    their leases to run out."""
    path = data_dir / "export" / "instance-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(uuid.uuid4().hex)
        return path.read_text().strip()


def build_export_server(settings: ExportSettings) -> ExportServer:
    """Starts the server on settings.host:settings.port and resumes unfinished jobs."""
    credentials = load_credentials(settings)
    wait = PeerWait(patience_seconds=settings.fault_patience_seconds)
    store = StoreClient(settings.store_address, credentials.peer, wait)
    compute = ComputeClient(settings.compute_address, credentials.peer, wait)
    objects = object_store_for(settings)
    planner = Planner(store, compute)
    uploads = Uploads(objects, settings.upload_limits(), settings.data_dir / "uploads")
    pipeline = ExportPipeline(settings, store, compute, planner, objects)
    workers = WorkerPool()
    manager = ExportJobManager(
        settings, store, planner, pipeline, workers, instance_id(settings.data_dir)
    )
    servicer = ExportServicer(
        manager,
        ExportEstimator(store, compute, planner),
        ArchiveValidator(store, objects),
        FeatureDashboards(store, compute),
        store,
        objects,
        uploads,
        settings.max_watchers,
    )
    registration = ServiceRegistration(
        SERVICE_NAME, lambda server: egrpc.add_ExportServiceServicer_to_server(servicer, server)
    )
    running, _ = create_aio_server(
        f"{settings.host}:{settings.port}",
        [registration],
        credentials,
        executor_workers=settings.max_workers,
        name="export-grpc",
    )
    manager.resume_unfinished()
    staging_sweeper = FolderSweeper(
        uploads.staging_root,
        settings.upload_staging_retention_seconds,
        uploads.staging_removable,
        settings.retention_sweep_seconds,
    )
    staging_sweeper.sweep_leftovers()
    staging_sweeper.start()
    monitor = DependencyMonitor(
        running.health,
        [SERVICE_NAME],
        [
            peer("store", settings.store_address, credentials.peer),
            peer("compute", settings.compute_address, credentials.peer),
            Dependency("object store", lambda: check_writable(objects)),
        ],
        settings.health_check_seconds,
    )
    monitor.start()
    return ExportServer(
        server=running.server,
        port=running.port,
        health=running.health,
        manager=manager,
        store=store,
        compute=compute,
        objects=objects,
        monitor=monitor,
        on_stop=[staging_sweeper.stop, workers.shutdown, store.close, compute.close],
    )
