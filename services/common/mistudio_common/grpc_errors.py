"""The one place where domain errors become gRPC statuses, and back.

Servicer methods are wrapped with :func:`handle_errors`, which also covers errors raised while a
server-streaming handler is iterating (an interceptor alone would miss those). Clients turn a
failed call back into the domain error with :func:`error_from_rpc`, so a store error reaching
the export service keeps its code, field and fix.
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from mistudio_common.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MistudioError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "mistudio"
_CODES: dict[type[MistudioError], int] = {
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    NotFound: code_pb2.NOT_FOUND,
    AlreadyExists: code_pb2.ALREADY_EXISTS,
    FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    ResourceExhausted: code_pb2.RESOURCE_EXHAUSTED,
    Cancelled: code_pb2.CANCELLED,
    Unavailable: code_pb2.UNAVAILABLE,
    Unauthenticated: code_pb2.UNAUTHENTICATED,
    PermissionDenied: code_pb2.PERMISSION_DENIED,
    Internal: code_pb2.INTERNAL,
}
_CLASSES_BY_CODE = {code: cls for cls, code in _CODES.items()}
_RETRYABLE_FOREIGN_CODES = (code_pb2.DEADLINE_EXCEEDED, code_pb2.ABORTED, code_pb2.UNKNOWN)
"""Codes without a domain class that a retry may cure; any other (UNIMPLEMENTED, DATA_LOSS,
…) is permanent and must not reach clients as UNAVAILABLE, which they retry."""


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def internal_error(error: BaseException) -> Internal:
    """A bug's public face: a reference into the service log, never its text (which may hold
    SQL, server paths or stack frames)."""
    reference = uuid.uuid4().hex[:12]
    log.error(
        "unhandled error",
        exc_info=error,
        extra={"reference": reference, "error_type": type(error).__name__},
    )
    return Internal(
        f"internal error (reference {reference})",
        fix="this is a bug in the service; report it with the reference, which its log names",
    )


def status_from_error(error: BaseException) -> status_pb2.Status:
    """A google.rpc.Status with the standard detail for the error's class plus an ErrorInfo."""
    if not isinstance(error, MistudioError):
        error = internal_error(error)
    code = next((c for cls, c in _CODES.items() if isinstance(error, cls)), code_pb2.UNKNOWN)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=type(error).__name__,
                domain=ERROR_DOMAIN,
                metadata={"field": error.field, "fix": error.fix},
            )
        )
    ]
    if isinstance(error, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=str(error)
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    elif isinstance(error, NotFound):
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=error.resource_type,
                    resource_name=error.resource_name,
                    description=str(error),
                )
            )
        )
    elif isinstance(error, FailedPrecondition):
        violations = [
            error_details_pb2.PreconditionFailure.Violation(
                type="MISSING", subject=subject, description=description
            )
            for subject, description in error.violations
        ]
        details.append(_pack(error_details_pb2.PreconditionFailure(violations=violations)))
    elif isinstance(error, Unavailable | ResourceExhausted):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.seconds = 1
        details.append(_pack(retry))
    message = str(error)
    return status_pb2.Status(code=code, message=message, details=details)


def error_from_status(status: status_pb2.Status) -> MistudioError:
    """Rebuilds the domain error a peer raised (or a generic one for foreign statuses)."""
    field, fix = "", ""
    violations: list[tuple[str, str]] = []
    resource_type = resource_name = ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            field, fix = info.metadata.get("field", ""), info.metadata.get("fix", "")
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            violations = [(v.subject, v.description) for v in failure.violations]
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info_r = error_details_pb2.ResourceInfo()
            detail.Unpack(info_r)
            resource_type, resource_name = info_r.resource_type, info_r.resource_name
    message = status.message
    suffix = f" (fix: {fix})"
    if fix and message.endswith(suffix):
        message = message[: -len(suffix)]
    cls = _CLASSES_BY_CODE.get(status.code)
    if cls is NotFound:
        return NotFound(
            message, resource_type=resource_type, resource_name=resource_name or field, fix=fix
        )
    if cls is FailedPrecondition:
        return FailedPrecondition(message, violations=violations, field=field, fix=fix)
    if cls is None and status.code in _RETRYABLE_FOREIGN_CODES:
        return Unavailable(f"peer failed with code {status.code}: {message}", fix=fix)
    if cls is None:
        return Internal(f"peer failed with code {status.code}: {message}", fix=fix)
    return cls(message, field=field, fix=fix)


def error_from_rpc(error: grpc.RpcError) -> MistudioError:
    """Client side: the domain error behind a failed call."""
    call = cast(grpc.Call, error)
    status = rpc_status.from_call(call)
    if status is None:
        code = call.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(
                f"peer unavailable: {call.details()}",
                fix="check that the service is running and its address is right",
            )
        status = status_pb2.Status(code=code.value[0], message=call.details() or "")
    return error_from_status(status)


T = TypeVar("T")


def call_peer(fn: Callable[[], T]) -> T:
    """Client side: ``fn()``, a failed call raised as the peer's domain error."""
    try:
        return fn()
    except grpc.RpcError as error:
        raise error_from_rpc(error) from error


def stream_peer(iterator_factory: Callable[[], Iterator[T]]) -> Iterator[T]:
    """Client side: a server stream, a failed call raised as the peer's domain error."""
    try:
        yield from iterator_factory()
    except grpc.RpcError as error:
        raise error_from_rpc(error) from error


def pages(fetch: Callable[[str], tuple[Sequence[T], str]]) -> Iterator[T]:
    """Every item of a paged list: ``fetch(page_token)`` gives a page and the next token."""
    token = ""
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return


Translation = Callable[[BaseException], MistudioError | None]
_translations: list[Translation] = []


def register_translation(translate: Translation) -> None:
    """Lets a service name its adapters' errors (the store: a lost database connection) as
    domain errors, so they map to statuses here like every other error."""
    if translate not in _translations:
        _translations.append(translate)


def _translated(error: BaseException) -> BaseException:
    for translate in _translations:
        error = translate(error) or error
    return error


def _abort(context: grpc.ServicerContext, error: BaseException) -> None:
    context.abort_with_status(rpc_status.to_status(status_from_error(_translated(error))))


async def _abort_async(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> None:
    status = rpc_status.to_status(status_from_error(_translated(error)))
    await context.abort(status.code, status.details, status.trailing_metadata)


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(method: F) -> F:
    """Maps domain errors raised by a servicer method to statuses: plain or ``async``, unary
    or streaming."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def async_stream_wrapper(
            self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async for message in method(self, request, context):
                    yield message
            except Exception as error:
                await _abort_async(context, error)

        return cast(F, async_stream_wrapper)

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_unary_wrapper(
            self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            try:
                return await method(self, request, context)
            except Exception as error:
                await _abort_async(context, error)

        return cast(F, async_unary_wrapper)

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except Exception as error:
                _abort(context, error)

        return cast(F, stream_wrapper)

    @functools.wraps(method)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as error:
            _abort(context, error)

    return cast(F, unary_wrapper)
