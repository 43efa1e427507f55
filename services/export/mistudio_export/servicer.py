"""The ExportService gRPC adapter: translates messages and delegates.

Jobs live in :class:`~mistudio_export.jobs.ExportJobManager`, outside any RPC: a progress stream
only watches a job, so a client that disconnects leaves it running. Errors are mapped to
statuses by ``handle_errors``, also when raised while a stream is being iterated.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio_common.errors import Unavailable
from mistudio_common.grpc_errors import handle_errors

from mistudio_export import views
from mistudio_export.checking import ArchiveValidator
from mistudio_export.clients import StoreClient
from mistudio_export.downloads import download_chunks, download_url, require_job_id
from mistudio_export.estimate import ExportEstimator
from mistudio_export.feature_dashboards import FeatureDashboards
from mistudio_export.jobs import ExportJobManager
from mistudio_export.object_store import ObjectStore


class ExportServicer(egrpc.ExportServiceServicer):
    def __init__(
        self,
        manager: ExportJobManager,
        estimator: ExportEstimator,
        archives: ArchiveValidator,
        dashboards: FeatureDashboards,
        store: StoreClient,
        objects: ObjectStore,
        default_owner: str,
    ) -> None:
        self._manager = manager
        self._estimator = estimator
        self._archives = archives
        self._dashboards = dashboards
        self._store = store
        self._objects = objects
        self._default_owner = default_owner

    @handle_errors
    def StartExport(
        self, request: epb.StartExportRequest, context: grpc.ServicerContext
    ) -> Iterator[epb.ExportProgress]:
        job_id = self._manager.start(request)
        yield from self._watch(job_id, context)

    @handle_errors
    def WatchExport(
        self, request: epb.WatchExportRequest, context: grpc.ServicerContext
    ) -> Iterator[epb.ExportProgress]:
        yield from self._watch(require_job_id(request.job_id), context)

    def _watch(self, job_id: str, context: grpc.ServicerContext) -> Iterator[epb.ExportProgress]:
        last = None
        for message in self._manager.watch(job_id, context.is_active):
            last = message
            yield message
        if context.is_active() and (last is None or not views.is_terminal(last)):
            raise Unavailable(
                "the export service is stopping; the job continues when it restarts",
                fix="reattach with WatchExport once the service is back",
            )

    @handle_errors
    def GetExport(
        self, request: epb.GetExportRequest, context: grpc.ServicerContext
    ) -> epb.GetExportResponse:
        return epb.GetExportResponse(job=self._manager.view(require_job_id(request.job_id)))

    @handle_errors
    def ListExports(
        self, request: epb.ListExportsRequest, context: grpc.ServicerContext
    ) -> epb.ListExportsResponse:
        return self._manager.list_jobs(request)

    @handle_errors
    def CancelExport(
        self, request: epb.CancelExportRequest, context: grpc.ServicerContext
    ) -> epb.CancelExportResponse:
        return epb.CancelExportResponse(job=self._manager.cancel(require_job_id(request.job_id)))

    @handle_errors
    def PauseExport(
        self, request: epb.PauseExportRequest, context: grpc.ServicerContext
    ) -> epb.PauseExportResponse:
        return epb.PauseExportResponse(job=self._manager.pause(require_job_id(request.job_id)))

    @handle_errors
    def ResumeExport(
        self, request: epb.ResumeExportRequest, context: grpc.ServicerContext
    ) -> epb.ResumeExportResponse:
        return epb.ResumeExportResponse(job=self._manager.resume(require_job_id(request.job_id)))

    @handle_errors
    def ValidateExport(
        self, request: epb.ValidateExportRequest, context: grpc.ServicerContext
    ) -> epb.ValidateExportResponse:
        return self._estimator.validate(request, self._default_owner)

    @handle_errors
    def ValidateArchive(
        self, request: epb.ValidateArchiveRequest, context: grpc.ServicerContext
    ) -> epb.ValidateArchiveResponse:
        return self._archives.validate(request)

    @handle_errors
    def GetDownloadUrl(
        self, request: epb.GetDownloadUrlRequest, context: grpc.ServicerContext
    ) -> epb.GetDownloadUrlResponse:
        return download_url(self._store, self._objects, request)

    @handle_errors
    def DownloadExport(
        self, request: epb.DownloadExportRequest, context: grpc.ServicerContext
    ) -> Iterator[epb.DownloadExportResponse]:
        yield from download_chunks(self._store, self._objects, request)

    @handle_errors
    def GetFeatureDashboard(
        self, request: epb.GetFeatureDashboardRequest, context: grpc.ServicerContext
    ) -> epb.GetFeatureDashboardResponse:
        return self._dashboards.get(request)

    @handle_errors
    def ListPresets(
        self, request: epb.ListPresetsRequest, context: grpc.ServicerContext
    ) -> epb.ListPresetsResponse:
        return self._estimator.list_presets(request, self._default_owner)
