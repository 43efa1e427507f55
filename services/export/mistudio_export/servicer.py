"""The ExportService gRPC adapter (grpc.aio): translates messages and delegates.

Jobs live in :class:`~mistudio_export.jobs.ExportJobManager`, outside any RPC: a progress stream
only watches a job, so a client that disconnects leaves it running. Handlers run on the event
loop and hand blocking work (the synchronous ``_…`` methods) to the loop's thread pool, which
carries the caller's identity along; a watch stream awaits its job's channel, so open watchers
hold no thread and cannot starve health checks or unary calls. Errors are mapped to statuses by
``handle_errors``, also when raised while a stream is being iterated. Every SAE and job a
request names passes :class:`~mistudio_export.access.Access` for the authenticated caller
first; the request's ``owner`` field can only repeat the caller (admins and services may name
anyone).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio_common.auth import Identity, current_caller, owner_for
from mistudio_common.errors import InvalidArgument, ResourceExhausted, Unavailable
from mistudio_common.grpc_errors import handle_errors
from mistudio_common.uploaded_inputs import UploadKind

from mistudio_export.access import (
    Access,
    check_uploaded_tokens,
    check_uploaded_weights,
    list_owner,
)
from mistudio_export.checking import ArchiveValidator
from mistudio_export.clients import StoreClient
from mistudio_export.downloads import download_chunks, download_url, require_job_id
from mistudio_export.estimate import ExportEstimator
from mistudio_export.feature_dashboards import DashboardQuery, FeatureDashboards
from mistudio_export.jobs import ExportJobManager, progress_message
from mistudio_export.limits import check_request_limits
from mistudio_export.messages import (
    dashboard_request_from_pb,
    estimate_to_pb,
    export_options_from_pb,
    preset_to_pb,
    token_source_from_pb,
    validation_problem_to_pb,
    validation_summary_to_pb,
)
from mistudio_export.object_store import ObjectStore
from mistudio_export.options import ExportOptions
from mistudio_export.peers import SaeRecord
from mistudio_export.plan import dashboard_params, token_source
from mistudio_export.uploads import CHUNK_FIELD, FileHeader, Uploads

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
        uploads: Uploads,
        max_watchers: int,
    ) -> None:
        self._manager = manager
        self._estimator = estimator
        self._archives = archives
        self._dashboards = dashboards
        self._store = store
        self._objects = objects
        self._uploads = uploads
        self._access = Access(store)
        self._max_watchers = max_watchers
        self._watchers = 0

    def _job(self, job_id: str) -> str:
        """The id of a job the caller may see (NOT_FOUND otherwise, as for an unknown id)."""
        return str(self._access.job(require_job_id(job_id), current_caller()).job_id)

    def _check_export(
        self, sae_id: str, owner: str, config: epb.ExportConfig, caller: Identity
    ) -> tuple[SaeRecord, ExportOptions]:
        """The SAE the export reads (``owner``'s, checked for the caller) and the options: its
        owner owns the job, and the planner reads it as that owner's. The SAE is checked first,
        so a config error never answers for an SAE the caller may not see; the inputs the
        options name after (a delta base of another owner's is the planner's, which reports it
        as missing at the step where it finds an unknown one)."""
        sae = self._access.sae(sae_id, owner, caller)
        check_uploaded_weights(sae)
        options = export_options_from_pb(config)
        check_uploaded_tokens(options.tokens.token_file, caller, "config.tokens")
        return sae, options

    def _start(self, request: epb.StartExportRequest) -> str:
        caller = current_caller()
        sae, _ = self._check_export(request.sae_id, request.owner, request.config, caller)
        job_id = self._manager.start(request.request_id, request.sae_id, sae.owner, request.config)
        return self._job(job_id)

    @handle_errors
    async def StartExport(
        self, request: epb.StartExportRequest, context: Context
    ) -> AsyncIterator[epb.ExportProgress]:
        job_id = await asyncio.to_thread(self._start, request)
        async for message in self._watch(job_id):
            yield message

    @handle_errors
    async def WatchExport(
        self, request: epb.WatchExportRequest, context: Context
    ) -> AsyncIterator[epb.ExportProgress]:
        job_id = await asyncio.to_thread(self._job, request.job_id)
        async for message in self._watch(job_id):
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
            async for snapshot in channel.watch_async(lambda: not self._manager.stopping):
                last = snapshot
                yield progress_message(snapshot)
        finally:
            self._watchers -= 1
        if last is None or not last.final:
            raise Unavailable(
                "the export service is stopping; the job continues when it restarts",
                fix="reattach with WatchExport once the service is back",
            )

    @handle_errors
    async def GetExport(
        self, request: epb.GetExportRequest, context: Context
    ) -> epb.GetExportResponse:
        def get() -> epb.GetExportResponse:
            return epb.GetExportResponse(job=self._manager.view(self._job(request.job_id)))

        return await asyncio.to_thread(get)

    @handle_errors
    async def ListExports(
        self, request: epb.ListExportsRequest, context: Context
    ) -> epb.ListExportsResponse:
        owner = list_owner(request.owner, current_caller())
        return await asyncio.to_thread(
            self._manager.list_jobs, request.page_size, request.page_token, request.sae_id, owner
        )

    @handle_errors
    async def DeleteExport(
        self, request: epb.DeleteExportRequest, context: Context
    ) -> epb.DeleteExportResponse:
        await asyncio.to_thread(lambda: self._manager.delete(self._job(request.job_id)))
        return epb.DeleteExportResponse()

    @handle_errors
    async def CancelExport(
        self, request: epb.CancelExportRequest, context: Context
    ) -> epb.CancelExportResponse:
        job = await asyncio.to_thread(lambda: self._manager.cancel(self._job(request.job_id)))
        return epb.CancelExportResponse(job=job)

    @handle_errors
    async def PauseExport(
        self, request: epb.PauseExportRequest, context: Context
    ) -> epb.PauseExportResponse:
        job = await asyncio.to_thread(lambda: self._manager.pause(self._job(request.job_id)))
        return epb.PauseExportResponse(job=job)

    @handle_errors
    async def ResumeExport(
        self, request: epb.ResumeExportRequest, context: Context
    ) -> epb.ResumeExportResponse:
        job = await asyncio.to_thread(lambda: self._manager.resume(self._job(request.job_id)))
        return epb.ResumeExportResponse(job=job)

    def _validate_export(self, request: epb.ValidateExportRequest) -> epb.ValidateExportResponse:
        caller = current_caller()
        sae, options = self._check_export(request.sae_id, request.owner, request.config, caller)
        estimate = self._estimator.estimate(request.sae_id, options, sae.owner)
        return epb.ValidateExportResponse(
            estimate=estimate_to_pb(estimate), warnings=estimate.warnings
        )

    @handle_errors
    async def ValidateExport(
        self, request: epb.ValidateExportRequest, context: Context
    ) -> epb.ValidateExportResponse:
        return await asyncio.to_thread(self._validate_export, request)

    def _validate_archive(self, request: epb.ValidateArchiveRequest) -> epb.ValidateArchiveResponse:
        self._job(request.job_id)
        checked = self._archives.validate(request.job_id, request.auto_fix, request.max_problems)
        return epb.ValidateArchiveResponse(
            summary=validation_summary_to_pb(checked.summary),
            problems=[validation_problem_to_pb(p) for p in checked.problems],
        )

    @handle_errors
    async def ValidateArchive(
        self, request: epb.ValidateArchiveRequest, context: Context
    ) -> epb.ValidateArchiveResponse:
        return await asyncio.to_thread(self._validate_archive, request)

    def _download_url(self, request: epb.GetDownloadUrlRequest) -> epb.GetDownloadUrlResponse:
        self._job(request.job_id)
        link = download_url(self._store, self._objects, request.job_id, request.expiry_seconds)
        expires_at = timestamp_pb2.Timestamp()
        expires_at.FromDatetime(link.expires_at)
        return epb.GetDownloadUrlResponse(url=link.url, expires_at=expires_at)

    @handle_errors
    async def GetDownloadUrl(
        self, request: epb.GetDownloadUrlRequest, context: Context
    ) -> epb.GetDownloadUrlResponse:
        return await asyncio.to_thread(self._download_url, request)

    def _download(self, request: epb.DownloadExportRequest) -> Iterator[epb.DownloadExportResponse]:
        self._job(request.job_id)
        for piece in download_chunks(self._store, self._objects, request.job_id, request.offset):
            yield epb.DownloadExportResponse(
                chunk=piece.data, offset=piece.offset, total_size=piece.total_size
            )

    @handle_errors
    async def DownloadExport(
        self, request: epb.DownloadExportRequest, context: Context
    ) -> AsyncIterator[epb.DownloadExportResponse]:
        async for chunk in _in_threads(lambda: self._download(request)):
            yield chunk

    def _dashboard(
        self, request: epb.GetFeatureDashboardRequest
    ) -> epb.GetFeatureDashboardResponse:
        check_request_limits(request, "")
        caller = current_caller()
        sae = self._access.sae(request.sae_id, request.owner, caller)
        check_uploaded_tokens(request.tokens.token_file, caller, "tokens")
        query = DashboardQuery(
            feature_index=request.feature_index,
            params=dashboard_params(dashboard_request_from_pb(request.params, "params"), "params"),
            tokens=token_source(token_source_from_pb(request.tokens), sae, "tokens"),
            compute_if_missing=request.compute_if_missing,
        )
        dashboard, cached = self._dashboards.get(sae, query)
        return epb.GetFeatureDashboardResponse(dashboard=dashboard, from_cache=cached)

    @handle_errors
    async def GetFeatureDashboard(
        self, request: epb.GetFeatureDashboardRequest, context: Context
    ) -> epb.GetFeatureDashboardResponse:
        return await asyncio.to_thread(self._dashboard, request)

    def _presets(self, request: epb.ListPresetsRequest) -> epb.ListPresetsResponse:
        caller = current_caller()
        owner = owner_for(request.owner, caller)
        if request.sae_id:
            owner = self._access.sae(request.sae_id, request.owner, caller).owner
        check_uploaded_tokens(request.config.tokens.token_file, caller, "config.tokens")
        # without an SAE nothing is estimated, so the config is not read
        options = export_options_from_pb(request.config) if request.sae_id else ExportOptions()
        listed = self._estimator.list_presets(request.sae_id, options, owner)
        return epb.ListPresetsResponse(presets=[preset_to_pb(p) for p in listed])

    @handle_errors
    async def ListPresets(
        self, request: epb.ListPresetsRequest, context: Context
    ) -> epb.ListPresetsResponse:
        return await asyncio.to_thread(self._presets, request)

    @handle_errors
    async def UploadInput(
        self, request_iterator: AsyncIterator[epb.UploadInputRequest], context: Context
    ) -> epb.UploadInputResponse:
        owner = owner_for("", current_caller())
        receiver = await asyncio.to_thread(self._uploads.receive, owner)
        try:
            async for message in request_iterator:
                part = message.WhichOneof("part")
                if part == "file":
                    await asyncio.to_thread(receiver.begin, _header(message.file))
                elif part == "chunk":
                    await asyncio.to_thread(receiver.write, message.chunk)
                else:
                    raise InvalidArgument(
                        "an upload message holds neither a file header nor a chunk",
                        field=CHUNK_FIELD,
                        fix="set file or chunk in every UploadInputRequest",
                    )
            stored = await asyncio.to_thread(receiver.finish)
        finally:
            await asyncio.to_thread(receiver.discard)
        return epb.UploadInputResponse(
            input_id=stored.location.input_id, uri=stored.location.uri, size_bytes=stored.size
        )

    def _delete_input(self, request: epb.DeleteInputRequest) -> epb.DeleteInputResponse:
        caller = current_caller()
        owner = None if caller.sees_everything else caller.name
        return epb.DeleteInputResponse(size_bytes=self._uploads.delete(request.uri, owner))

    @handle_errors
    async def DeleteInput(
        self, request: epb.DeleteInputRequest, context: Context
    ) -> epb.DeleteInputResponse:
        return await asyncio.to_thread(self._delete_input, request)


_UPLOAD_KINDS = {
    epb.UPLOAD_KIND_SAE_FILE: UploadKind.SAE_FOLDER,
    epb.UPLOAD_KIND_TOKEN_FILE: UploadKind.TOKEN_FILE,
}


def _header(message: epb.UploadFileHeader) -> FileHeader:
    return FileHeader(
        _UPLOAD_KINDS.get(message.kind), message.name, message.size, message.sha256.lower()
    )


async def _in_threads(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Iterates a blocking generator on the thread pool, one item per hop (each hop carries the
    caller's context, as ``asyncio.to_thread`` does)."""
    iterator = make()
    done = object()
    while (item := await asyncio.to_thread(next, iterator, done)) is not done:
        yield item  # type: ignore[misc]
