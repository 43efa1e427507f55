"""The server interceptors that authenticate every call before a servicer sees it.

The sync and the asyncio variant share :func:`~mistudio_common.auth.resolve_identity`; both
wrap the method handler (not just inspect the call) so the identity is bound while the
servicer runs, streaming responses included, and servicers read it with ``current_caller()``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from grpc_status import rpc_status

from mistudio_common.auth import (
    HEALTH_PREFIX,
    Credentials,
    Identity,
    authorize,
    bind_caller,
    resolve_identity,
    unbind_caller,
)
from mistudio_common.errors import MistudioError
from mistudio_common.grpc_errors import status_from_error

_COMMON_NAME = "x509_common_name"


class _Check:
    """Authenticates and authorizes one method's calls."""

    def __init__(self, credentials: Credentials, method: str, service_only: frozenset[str]):
        self._credentials = credentials
        self._method = method
        self._service_only = service_only

    def __call__(self, context: grpc.ServicerContext | grpc.aio.ServicerContext) -> Identity:
        names = context.auth_context().get(_COMMON_NAME, [])
        identity = resolve_identity(self._credentials, context.invocation_metadata() or (), names)
        authorize(identity, self._method, self._service_only)
        return identity


def _needs_check(details: grpc.HandlerCallDetails) -> bool:
    return not details.method.startswith(HEALTH_PREFIX)


class AuthInterceptor(grpc.ServerInterceptor):
    """For a ``grpc.server``: rejects unauthenticated calls, binds the caller for the rest."""

    def __init__(self, credentials: Credentials, service_only: frozenset[str]) -> None:
        self._credentials = credentials
        self._service_only = service_only

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not _needs_check(handler_call_details):
            return handler
        check = _Check(self._credentials, handler_call_details.method, self._service_only)
        kind = _kind(handler)
        behavior = getattr(handler, kind)
        wrapped = _sync_stream(behavior, check) if handler.response_streaming else None
        return handler._replace(**{kind: wrapped or _sync_unary(behavior, check)})  # type: ignore[attr-defined]


def _kind(handler: grpc.RpcMethodHandler) -> str:
    request = "stream" if handler.request_streaming else "unary"
    response = "stream" if handler.response_streaming else "unary"
    return f"{request}_{response}"


def _authenticate(check: _Check, context: grpc.ServicerContext) -> Identity:
    try:
        return check(context)
    except MistudioError as error:
        context.abort_with_status(rpc_status.to_status(status_from_error(error)))
        raise  # abort_with_status always raises; this keeps the type checker informed


def _sync_unary(behavior: Callable[..., Any], check: _Check) -> Callable[..., Any]:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        token = bind_caller(_authenticate(check, context))
        try:
            return behavior(request, context)
        finally:
            unbind_caller(token)

    return wrapped


def _sync_stream(behavior: Callable[..., Any], check: _Check) -> Callable[..., Iterator[Any]]:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        token = bind_caller(_authenticate(check, context))
        try:
            yield from behavior(request, context)
        finally:
            unbind_caller(token)

    return wrapped


class AioAuthInterceptor(grpc.aio.ServerInterceptor):
    """The same check for a ``grpc.aio.server``."""

    def __init__(self, credentials: Credentials, service_only: frozenset[str]) -> None:
        self._credentials = credentials
        self._service_only = service_only

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not _needs_check(handler_call_details):
            return handler
        check = _Check(self._credentials, handler_call_details.method, self._service_only)
        kind = _kind(handler)
        behavior = getattr(handler, kind)
        if inspect.isasyncgenfunction(behavior):
            wrapped: Callable[..., Any] = _aio_stream(behavior, check)
        else:
            wrapped = _aio_unary(behavior, check)
        return handler._replace(**{kind: wrapped})  # type: ignore[attr-defined,no-any-return]


async def _aio_authenticate(check: _Check, context: grpc.aio.ServicerContext) -> Identity:
    try:
        return check(context)
    except MistudioError as error:
        await context.abort_with_status(rpc_status.to_status(status_from_error(error)))
        raise  # abort_with_status always raises; this keeps the type checker informed


def _aio_unary(behavior: Callable[..., Any], check: _Check) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = bind_caller(await _aio_authenticate(check, context))
        try:
            return await behavior(request, context)
        finally:
            unbind_caller(token)

    return wrapped


def _aio_stream(behavior: Callable[..., Any], check: _Check) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        token = bind_caller(await _aio_authenticate(check, context))
        try:
            async for response in behavior(request, context):
                yield response
        finally:
            # Closed from another task (the event loop's shutdown, on Ctrl-C), the generator
            # runs this in a context the caller was never bound in: nothing to reset there.
            with contextlib.suppress(ValueError):
                unbind_caller(token)

    return wrapped
