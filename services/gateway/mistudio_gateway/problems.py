"""gRPC statuses as HTTP answers: one mapping table and an RFC 9457 problem+json body.

The HTTP codes follow google.rpc.Code's documented HTTP mapping, so a REST client sees what a
gRPC client would; the body keeps the status's details (the field to change, the fix, and the
precondition violations) so nothing the service said is lost in translation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import grpc
from fastapi.responses import JSONResponse
from mistudio_common.errors import FailedPrecondition, MistudioError
from mistudio_common.grpc_errors import error_from_rpc

PROBLEM_MEDIA_TYPE = "application/problem+json"
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
"""google.rpc.Code → HTTP, as googleapis' code.proto documents it."""


@dataclass(frozen=True)
class Problem:
    """One problem+json document; ``code`` names the gRPC status it came from."""

    status: int
    code: str
    detail: str
    field: str = ""
    fix: str = ""
    violations: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {
            "type": f"urn:mistudio:problem:{self.code.lower().replace('_', '-')}",
            "title": self.code.replace("_", " ").capitalize(),
            "status": self.status,
            "detail": self.detail,
            "grpc_status": self.code,
        }
        if self.field:
            body["field"] = self.field
        if self.fix:
            body["fix"] = self.fix
        if self.violations:
            body["violations"] = self.violations
        return body

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(
            self.body(), status_code=self.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
        )


def problem_from_rpc(error: grpc.RpcError) -> Problem:
    """The problem a failed call stands for, with the structured details of its status."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    domain = error_from_rpc(error)
    detail: str = error.details() or domain.message  # type: ignore[attr-defined]
    return _problem(code, domain, detail.removesuffix(f" (fix: {domain.fix})"))


def _problem(code: grpc.StatusCode, domain: MistudioError, detail: str) -> Problem:
    violations = (
        [{"subject": s, "description": d} for s, d in domain.violations]
        if isinstance(domain, FailedPrecondition)
        else []
    )
    return Problem(
        status=HTTP_STATUS.get(code, 500),
        code=code.name,
        detail=detail,
        field=domain.field,
        fix=domain.fix,
        violations=violations,
    )


def bad_request(detail: str, *, field: str, fix: str) -> Problem:
    """A request the gateway itself rejects before calling the service."""
    return Problem(status=400, code="INVALID_ARGUMENT", detail=detail, field=field, fix=fix)


def not_found(detail: str, *, field: str, fix: str) -> Problem:
    return Problem(status=404, code="NOT_FOUND", detail=detail, field=field, fix=fix)
