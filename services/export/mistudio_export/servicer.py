"""The ExportService gRPC adapter (grpc.aio): translates messages and delegates.

Jobs live in :class:`~mistudio_export.jobs.ExportJobManager`, outside any RPC: a progress stream
only watches a job, so a client that disconnects leaves it running. Handlers run on the event
loop and hand blocking domain work to the loop's thread pool; a watch stream awaits its job's
channel, so open watchers hold no thread and cannot starve health checks or unary calls. Errors
are mapped to statuses by ``handle_errors``, also when raised while a stream is being iterated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeAlias, TypeVar

import grpc
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio_common.errors import ResourceExhausted, Unavailable
from mistudio_common.grpc_errors import handle_errors

from mistudio_export import views
from mistudio_export.checking import ArchiveValidator
from mistudio_export.clients import StoreClient
from mistudio_export.downloads import download_chunks, download_url, require_job_id
from mistudio_export.estimate import ExportEstimator
from mistudio_export.feature_dashboards import FeatureDashboards
from mistudio_export.jobs import ExportJobManager
from mistudio_export.object_store import ObjectStore

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
T = TypeVar("T")


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
        max_watchers: int,
    ) -> None:
        self._manager = manager
        self._estimator = estimator
        self._archives = archives
        self._dashboards = dashboards
        self._store = store
        self._objects = objects
        self._default_owner = default_owner
        self._max_watchers = max_watchers
        self._watchers = 0

    @handle_errors
    async def StartExport(
        self, request: epb.StartExportRequest, context: Context
    ) -> AsyncIterator[epb.ExportProgress]:
        job_id = await asyncio.to_thread(self._manager.start, request)
        async for message in self._watch(job_id):
            yield message

    @handle_errors
    async def WatchExport(
        self, request: epb.WatchExportRequest, context: Context
    ) -> AsyncIterator[epb.ExportProgress]:
        async for message in self._watch(require_job_id(request.job_id)):
            yield message

    async def _watch(self, job_id: str) -> AsyncIterator[epb.ExportProgress]:
        if self._watchers >= self._max_watchers:
            raise ResourceExhausted(
                f"the export service already serves {self._watchers} progress streams, its "
                "limit (MISTUDIO_EXPORT_MAX_WATCHERS)",
                fix="retry later, poll with GetExport, or raise the limit",
            )
        self._watchers += 1  # only the event loop's thread counts, so no lock is needed
        try:
            channel = await asyncio.to_thread(self._manager.channel, job_id)
            last = None
            async for message in channel.watch_async(lambda: not self._manager.stopping):
                last = message
                yield message
        finally:
            self._watchers -= 1
        if last is None or not views.is_terminal(last):
            raise Unavailable(
                "the export service is stopping; the job continues when it restarts",
                fix="reattach with WatchExport once the service is back",
            )

    @handle_errors
    async def GetExport(
        self, request: epb.GetExportRequest, context: Context
    ) -> epb.GetExportResponse:
        job = await asyncio.to_thread(self._manager.view, require_job_id(request.job_id))
        return epb.GetExportResponse(job=job)

    @handle_errors
    async def ListExports(
        self, request: epb.ListExportsRequest, context: Context
    ) -> epb.ListExportsResponse:
        return await asyncio.to_thread(self._manager.list_jobs, request)

    @handle_errors
    async def DeleteExport(
        self, request: epb.DeleteExportRequest, context: Context
    ) -> epb.DeleteExportResponse:
        await asyncio.to_thread(self._manager.delete, require_job_id(request.job_id))
        return epb.DeleteExportResponse()

    @handle_errors
    async def CancelExport(
        self, request: epb.CancelExportRequest, context: Context
    ) -> epb.CancelExportResponse:
        job = await asyncio.to_thread(self._manager.cancel, require_job_id(request.job_id))
        return epb.CancelExportResponse(job=job)

    @handle_errors
    async def PauseExport(
        self, request: epb.PauseExportRequest, context: Context
    ) -> epb.PauseExportResponse:
        job = await asyncio.to_thread(self._manager.pause, require_job_id(request.job_id))
        return epb.PauseExportResponse(job=job)

    @handle_errors
    async def ResumeExport(
        self, request: epb.ResumeExportRequest, context: Context
    ) -> epb.ResumeExportResponse:
        job = await asyncio.to_thread(self._manager.resume, require_job_id(request.job_id))
        return epb.ResumeExportResponse(job=job)

    @handle_errors
    async def ValidateExport(
        self, request: epb.ValidateExportRequest, context: Context
    ) -> epb.ValidateExportResponse:
        return await asyncio.to_thread(self._estimator.validate, request, self._default_owner)

    @handle_errors
    async def ValidateArchive(
        self, request: epb.ValidateArchiveRequest, context: Context
    ) -> epb.ValidateArchiveResponse:
        return await asyncio.to_thread(self._archives.validate, request)

    @handle_errors
    async def GetDownloadUrl(
        self, request: epb.GetDownloadUrlRequest, context: Context
    ) -> epb.GetDownloadUrlResponse:
        return await asyncio.to_thread(download_url, self._store, self._objects, request)

    @handle_errors
    async def DownloadExport(
        self, request: epb.DownloadExportRequest, context: Context
    ) -> AsyncIterator[epb.DownloadExportResponse]:
        async for chunk in _in_threads(
            lambda: download_chunks(self._store, self._objects, request)
        ):
            yield chunk

    @handle_errors
    async def GetFeatureDashboard(
        self, request: epb.GetFeatureDashboardRequest, context: Context
    ) -> epb.GetFeatureDashboardResponse:
        return await asyncio.to_thread(self._dashboards.get, request)


async def _in_threads(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Iterates a blocking generator on the thread pool, one item per hop."""
    iterator = await asyncio.to_thread(make)
    done = object()
    while (item := await asyncio.to_thread(next, iterator, done)) is not done:
        yield item  # type: ignore[misc]
