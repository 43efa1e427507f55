"""The ExportService gRPC adapter: translates messages and delegates.

Jobs live in :class:`~mistudio_export.jobs.ExportJobManager`, outside any RPC: a progress stream
only watches a job, so a client that disconnects leaves it running. Errors are mapped to
statuses by ``handle_errors``, also when raised while a stream is being iterated. Every SAE and
job a request names passes :class:`~mistudio_export.access.Access` for the authenticated caller
first; the request's ``owner`` field can only repeat the caller (admins and services may name
anyone).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio_common.auth import Identity, current_caller, owner_for
from mistudio_common.errors import Unavailable
from mistudio_common.grpc_errors import handle_errors

from mistudio_export import views
from mistudio_export.access import Access, list_owner
from mistudio_export.checking import ArchiveValidator
from mistudio_export.clients import StoreClient
from mistudio_export.downloads import download_chunks, download_url, require_job_id
from mistudio_export.estimate import ExportEstimator
from mistudio_export.feature_dashboards import FeatureDashboards
from mistudio_export.jobs import ExportJobManager
from mistudio_export.object_store import ObjectStore
from mistudio_export.preflight import missing_delta_base


class ExportServicer(egrpc.ExportServiceServicer):
    def __init__(
        self,
        manager: ExportJobManager,
        estimator: ExportEstimator,
        archives: ArchiveValidator,
        dashboards: FeatureDashboards,
        store: StoreClient,
        objects: ObjectStore,
    ) -> None:
        self._manager = manager
        self._estimator = estimator
        self._archives = archives
        self._dashboards = dashboards
        self._store = store
        self._objects = objects
        self._access = Access(store)

    def _job(self, job_id: str) -> str:
        """The id of a job the caller may see (NOT_FOUND otherwise, as for an unknown id)."""
        return str(self._access.job(require_job_id(job_id), current_caller()).job_id)

    def _check_export(self, sae_id: str, config: epb.ExportConfig, caller: Identity) -> None:
        self._access.sae(sae_id, caller)
        base = config.delta_base_job_id
        if base and self._access.hides_job(base, caller):
            raise missing_delta_base(base)  # what the planner says of a base that does not exist

    @handle_errors
    def StartExport(
        self, request: epb.StartExportRequest, context: grpc.ServicerContext
    ) -> Iterator[epb.ExportProgress]:
        caller = current_caller()
        self._check_export(request.sae_id, request.config, caller)
        owned = epb.StartExportRequest()
        owned.CopyFrom(request)
        owned.owner = owner_for(request.owner, caller)
        job_id = self._manager.start(owned)
        yield from self._watch(self._job(job_id), context)

    @handle_errors
    def WatchExport(
        self, request: epb.WatchExportRequest, context: grpc.ServicerContext
    ) -> Iterator[epb.ExportProgress]:
        yield from self._watch(self._job(request.job_id), context)

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
        return epb.GetExportResponse(job=self._manager.view(self._job(request.job_id)))

    @handle_errors
    def ListExports(
        self, request: epb.ListExportsRequest, context: grpc.ServicerContext
    ) -> epb.ListExportsResponse:
        owned = epb.ListExportsRequest()
        owned.CopyFrom(request)
        owned.owner = list_owner(request.owner, current_caller())
        return self._manager.list_jobs(owned)

    @handle_errors
    def CancelExport(
        self, request: epb.CancelExportRequest, context: grpc.ServicerContext
    ) -> epb.CancelExportResponse:
        return epb.CancelExportResponse(job=self._manager.cancel(self._job(request.job_id)))

    @handle_errors
    def PauseExport(
        self, request: epb.PauseExportRequest, context: grpc.ServicerContext
    ) -> epb.PauseExportResponse:
        return epb.PauseExportResponse(job=self._manager.pause(self._job(request.job_id)))

    @handle_errors
    def ResumeExport(
        self, request: epb.ResumeExportRequest, context: grpc.ServicerContext
    ) -> epb.ResumeExportResponse:
        return epb.ResumeExportResponse(job=self._manager.resume(self._job(request.job_id)))

    @handle_errors
    def ValidateExport(
        self, request: epb.ValidateExportRequest, context: grpc.ServicerContext
    ) -> epb.ValidateExportResponse:
        caller = current_caller()
        self._check_export(request.sae_id, request.config, caller)
        return self._estimator.validate(request, owner_for("", caller))

    @handle_errors
    def ValidateArchive(
        self, request: epb.ValidateArchiveRequest, context: grpc.ServicerContext
    ) -> epb.ValidateArchiveResponse:
        self._job(request.job_id)
        return self._archives.validate(request)

    @handle_errors
    def GetDownloadUrl(
        self, request: epb.GetDownloadUrlRequest, context: grpc.ServicerContext
    ) -> epb.GetDownloadUrlResponse:
        self._job(request.job_id)
        return download_url(self._store, self._objects, request)

    @handle_errors
    def DownloadExport(
        self, request: epb.DownloadExportRequest, context: grpc.ServicerContext
    ) -> Iterator[epb.DownloadExportResponse]:
        self._job(request.job_id)
        yield from download_chunks(self._store, self._objects, request)

    @handle_errors
    def GetFeatureDashboard(
        self, request: epb.GetFeatureDashboardRequest, context: grpc.ServicerContext
    ) -> epb.GetFeatureDashboardResponse:
        self._access.sae(request.sae_id, current_caller())
        return self._dashboards.get(request)

    @handle_errors
    def ListPresets(
        self, request: epb.ListPresetsRequest, context: grpc.ServicerContext
    ) -> epb.ListPresetsResponse:
        caller = current_caller()
        if request.sae_id:
            self._access.sae(request.sae_id, caller)
        return self._estimator.list_presets(request, owner_for("", caller))
