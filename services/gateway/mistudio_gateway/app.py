"""The gateway's routes: PRD FR-4.3's REST endpoints, an SSE progress stream and a progress page.

Every route is a thin adapter over one export-service RPC. The caller's ``Authorization`` header
travels on as gRPC metadata, so the service authenticates and authorizes the caller exactly as
it would a gRPC client; the gateway holds no credentials of its own. A service without
credentials trusts every loopback caller, and the gateway is one: so a gateway reachable from
other hosts (``require_credentials``) refuses requests that carry no identity to pass on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

import grpc
from fastapi import Body, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio_common.server import CHANNEL_OPTIONS

from mistudio_gateway.events import KEEPALIVE_SECONDS, parse_last_event_id, progress_events
from mistudio_gateway.messages import ProblemError, from_json, to_json
from mistudio_gateway.problems import (
    PROBLEM_MEDIA_TYPE,
    Problem,
    bad_request,
    not_found,
    problem_from_rpc,
)

API = "/api/v1"
EXPORTS = API + "/saes/{sae_id}/export/neuronpedia"
FORWARDED_HEADERS = ("authorization",)
"""Request headers passed to the service as gRPC metadata (the caller's identity)."""
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {PROBLEM_MEDIA_TYPE: {}}}
    for status, text in (
        (400, "invalid request (the problem names the field and the fix)"),
        (401, "no or bad credentials"),
        (403, "not allowed for this caller"),
        (404, "unknown SAE, job or feature"),
        (503, "the export service cannot be reached"),
    )
}


def metadata(request: Request) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, request.headers[name]) for name in FORWARDED_HEADERS if name in request.headers
    )


def create_app(
    export_address: str,
    *,
    require_credentials: bool = False,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
    tls_ca: bytes | None = None,
) -> FastAPI:
    """The ASGI app; its gRPC channel to ``export_address`` (TLS when ``tls_ca`` is given, to
    check the service's certificate) lives as long as the app runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if tls_ca is None:
            channel = grpc.aio.insecure_channel(export_address, options=CHANNEL_OPTIONS)
        else:
            tls = grpc.ssl_channel_credentials(root_certificates=tls_ca)
            channel = grpc.aio.secure_channel(export_address, tls, options=CHANNEL_OPTIONS)
        async with channel:
            app.state.exports = egrpc.ExportServiceStub(channel)
            yield

    app = FastAPI(
        title="miStudio Export gateway",
        version="1",
        description="REST and Server-Sent-Events access to the export service. Bodies and "
        "answers are the gRPC messages in proto3 JSON (snake_case field names); errors are "
        "application/problem+json.",
        lifespan=lifespan,
        responses=PROBLEM_RESPONSES,
    )

    @app.exception_handler(grpc.RpcError)
    async def rpc_failed(_request: Request, error: grpc.RpcError) -> JSONResponse:
        return problem_from_rpc(error).response()

    @app.exception_handler(ProblemError)
    async def rejected(_request: Request, error: ProblemError) -> JSONResponse:
        return error.problem.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return bad_request(
            f"{where}: {first.get('msg', 'invalid')}", field=where, fix="see /docs"
        ).response()

    def exports(request: Request) -> egrpc.ExportServiceStub:
        if require_credentials and "authorization" not in request.headers:
            raise ProblemError(
                Problem(
                    status=401,
                    code="UNAUTHENTICATED",
                    detail="this gateway passes each caller's identity to the export service, "
                    "and the request carries none",
                    field="authorization",
                    fix="send an 'Authorization: Bearer <token>' header",
                )
            )
        stub: egrpc.ExportServiceStub = request.app.state.exports
        return stub

    async def job_of(request: Request, sae_id: str, job_id: str) -> epb.ExportJobView:
        """The job, which must belong to ``sae_id`` (a job of another SAE is not found here)."""
        response = await exports(request).GetExport(
            epb.GetExportRequest(job_id=job_id), metadata=metadata(request)
        )
        if response.job.sae_id != sae_id:
            raise ProblemError(
                not_found(
                    f"export {job_id} is not an export of SAE {sae_id}",
                    field="job_id",
                    fix=f"use /api/v1/saes/{response.job.sae_id}/… or the right job id",
                )
            )
        job: epb.ExportJobView = response.job
        return job

    @app.post(EXPORTS, status_code=202, summary="Start an export of an SAE")
    async def start_export(
        request: Request,
        sae_id: str,
        body: Annotated[
            dict[str, Any],
            Body(
                description="StartExportRequest in proto3 JSON; sae_id comes from the path and "
                "config.formats defaults to Neuronpedia",
                examples=[{"request_id": "r-1", "config": {"selection": {"all": True}}}],
            ),
        ],
    ) -> JSONResponse:
        start = from_json(body, epb.StartExportRequest(), what="StartExportRequest")
        start.sae_id = sae_id
        if not start.config.formats:
            start.config.formats.append(epb.EXPORT_FORMAT_NEURONPEDIA)
        stream = exports(request).StartExport(start, metadata=metadata(request))
        try:
            first = await stream.read()
        finally:
            stream.cancel()  # the job runs on in the service; this only drops our watch
        if not isinstance(first, epb.ExportProgress):
            raise ProblemError(
                Problem(
                    status=503,
                    code="UNAVAILABLE",
                    detail="the export service ended the start stream without a message",
                    fix="retry with the same request_id: it re-attaches to the same job",
                )
            )
        job_id = first.progress.job_id
        links = job_links(sae_id, job_id)
        return JSONResponse(
            {"job_id": job_id, "progress": to_json(first.progress), "links": links},
            status_code=202,
            headers={"Location": links["status"]},
        )

    @app.get(EXPORTS + "/status/{job_id}", summary="An export job: state, progress and result")
    async def export_status(request: Request, sae_id: str, job_id: str) -> dict[str, Any]:
        job = await job_of(request, sae_id, job_id)
        return {"job": to_json(job), "links": job_links(sae_id, job_id)}

    @app.get(
        EXPORTS + "/events/{job_id}",
        summary="Progress as Server-Sent Events; resumes after Last-Event-ID",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def export_events(
        request: Request,
        sae_id: str,
        job_id: str,
        last_event_id: Annotated[str | None, Header()] = None,
        after: Annotated[
            int | None, Query(description="same as Last-Event-ID, for clients without headers")
        ] = None,
    ) -> StreamingResponse:
        await job_of(request, sae_id, job_id)  # errors become HTTP codes before the stream opens
        watch = exports(request).WatchExport(
            epb.WatchExportRequest(job_id=job_id), metadata=metadata(request)
        )
        seen = after if after is not None else parse_last_event_id(last_event_id)
        return StreamingResponse(
            progress_events(watch, seen, keepalive_seconds),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        EXPORTS + "/download/{job_id}",
        summary="The finished archive: a redirect to a presigned URL, or the bytes",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/zip": {}}}, 307: {"description": "redirect"}},
    )
    async def download(
        request: Request,
        sae_id: str,
        job_id: str,
        stream: Annotated[bool, Query(description="stream the bytes through the gateway")] = False,
        expiry_seconds: Annotated[int, Query(description="presigned URL lifetime")] = 3600,
    ) -> Any:
        await job_of(request, sae_id, job_id)
        if not stream:
            link = await exports(request).GetDownloadUrl(
                epb.GetDownloadUrlRequest(job_id=job_id, expiry_seconds=expiry_seconds),
                metadata=metadata(request),
            )
            if link.url.startswith(("http://", "https://")):
                return RedirectResponse(link.url, status_code=307)
        return await stream_archive(request, job_id)

    async def stream_archive(request: Request, job_id: str) -> StreamingResponse:
        call = exports(request).DownloadExport(
            epb.DownloadExportRequest(job_id=job_id), metadata=metadata(request)
        )
        first = await call.read()  # a failure here is still an HTTP error, not a broken body
        if first is grpc.aio.EOF:
            raise ProblemError(
                not_found(f"export {job_id} has no archive", field="job_id", fix="export again")
            )
        assert isinstance(first, epb.DownloadExportResponse)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                message: object = first
                while isinstance(message, epb.DownloadExportResponse):
                    yield message.chunk
                    message = await call.read()
            finally:
                call.cancel()

        return StreamingResponse(
            chunks(),
            media_type="application/zip",
            headers={
                "Content-Length": str(first.total_size),
                "Content-Disposition": f'attachment; filename="{job_id}.zip"',
            },
        )

    @app.post(
        API + "/saes/{sae_id}/export/validate",
        summary="Check an SAE and an export configuration; estimate time and size (no job)",
    )
    async def validate_config(
        request: Request,
        sae_id: str,
        body: Annotated[
            dict[str, Any] | None,
            Body(description="ExportConfig in proto3 JSON (optional)"),
        ] = None,
    ) -> dict[str, Any]:
        config = from_json(body or {}, epb.ExportConfig(), what="ExportConfig")
        if not config.formats:
            config.formats.append(epb.EXPORT_FORMAT_NEURONPEDIA)
        response = await exports(request).ValidateExport(
            epb.ValidateExportRequest(sae_id=sae_id, config=config), metadata=metadata(request)
        )
        return to_json(response)

    @app.post(EXPORTS + "/validate/{job_id}", summary="Validate a finished export's archive")
    async def validate_archive(
        request: Request,
        sae_id: str,
        job_id: str,
        max_problems: Annotated[int, Query(ge=0, description="0 means 1000")] = 0,
    ) -> dict[str, Any]:
        await job_of(request, sae_id, job_id)
        response = await exports(request).ValidateArchive(
            epb.ValidateArchiveRequest(job_id=job_id, max_problems=max_problems),
            metadata=metadata(request),
        )
        return to_json(response)

    @app.get(
        API + "/saes/{sae_id}/features/{feature_index}/dashboard",
        summary="One feature's dashboard data, from the cache or computed on demand",
    )
    async def feature_dashboard(
        request: Request,
        sae_id: str,
        feature_index: int,
        compute_if_missing: Annotated[
            bool, Query(description="compute it when nothing is cached (otherwise 404)")
        ] = False,
    ) -> dict[str, Any]:
        response = await exports(request).GetFeatureDashboard(
            epb.GetFeatureDashboardRequest(
                sae_id=sae_id, feature_index=feature_index, compute_if_missing=compute_if_missing
            ),
            metadata=metadata(request),
        )
        return to_json(response)

    @app.get(API + "/saes/{sae_id}/exports", summary="An SAE's export jobs, newest first")
    async def list_exports(
        request: Request,
        sae_id: str,
        page_size: Annotated[int, Query(ge=0, le=1000, description="0: the service default")] = 0,
        page_token: str = "",
    ) -> dict[str, Any]:
        response = await exports(request).ListExports(
            epb.ListExportsRequest(sae_id=sae_id, page_size=page_size, page_token=page_token),
            metadata=metadata(request),
        )
        return to_json(response)

    @app.get(
        "/saes/{sae_id}/exports/{job_id}",
        response_class=HTMLResponse,
        summary="A page that follows an export's progress live",
    )
    async def progress_page(sae_id: str, job_id: str) -> HTMLResponse:
        links = job_links(sae_id, job_id)
        page = PROGRESS_PAGE
        for name, value in (
            ("events", links["events"]),
            ("download", links["download"]),
            ("job_id", job_id),
        ):
            page = page.replace("{{" + name + "}}", _attribute(value))
        return HTMLResponse(page)

    return app


def job_links(sae_id: str, job_id: str) -> dict[str, str]:
    sae_id, job_id = quote(sae_id, safe=""), quote(job_id, safe="")
    base = EXPORTS.format(sae_id=sae_id)
    return {
        "status": f"{base}/status/{job_id}",
        "events": f"{base}/events/{job_id}",
        "download": f"{base}/download/{job_id}",
        "validate": f"{base}/validate/{job_id}",
        "page": f"/saes/{sae_id}/exports/{job_id}",
    }


def _attribute(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    )


PROGRESS_PAGE = resources.files(__package__).joinpath("progress.html").read_text("utf-8")
