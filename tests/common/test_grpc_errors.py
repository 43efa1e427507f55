"""Domain errors survive the trip through a gRPC status and back, details included."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from mistudio_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from mistudio_common.grpc_errors import error_from_status, handle_errors, status_from_error


def test_invalid_argument_carries_a_field_violation_naming_the_field() -> None:
    status = status_from_error(InvalidArgument("d_in is 0", field="sae.d_in", fix="give d_in > 0"))
    assert status.code == code_pb2.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in status.details if d.Is(bad_request.DESCRIPTOR))
    assert bad_request.field_violations[0].field == "sae.d_in"
    assert "give d_in > 0" in bad_request.field_violations[0].description


def test_failed_precondition_lists_what_is_missing() -> None:
    error = FailedPrecondition("SAE lacks data", violations=[("tokens", "register a token set")])
    back = error_from_status(status_from_error(error))
    assert isinstance(back, FailedPrecondition)
    assert back.violations == [("tokens", "register a token set")]


def test_round_trip_keeps_class_field_and_fix() -> None:
    for error in (
        InvalidArgument("bad", field="page_size", fix="use 1..1000"),
        AlreadyExists("dup", field="sae_id", fix="pick another id"),
        Unavailable("down", fix="start the store"),
    ):
        back = error_from_status(status_from_error(error))
        assert type(back) is type(error)
        assert (back.message, back.field, back.fix) == (error.message, error.field, error.fix)


def test_not_found_names_the_resource() -> None:
    back = error_from_status(
        status_from_error(NotFound("no such SAE", resource_type="sae", resource_name="x"))
    )
    assert isinstance(back, NotFound)
    assert (back.resource_type, back.resource_name) == ("sae", "x")


def test_unexpected_exceptions_become_internal_without_a_traceback() -> None:
    status = status_from_error(RuntimeError("boom"))
    assert status.code == code_pb2.INTERNAL
    assert "Traceback" not in status.message


def test_internal_errors_hide_sql_and_server_paths_behind_a_log_reference() -> None:
    leak = RuntimeError("(psycopg.DataError) INSERT INTO export_jobs ... at /srv/mistudio/x.py")
    status = status_from_error(leak)
    assert status.code == code_pb2.INTERNAL
    assert "INSERT" not in status.message and "/srv" not in status.message
    assert re.fullmatch(r"internal error \(reference [0-9a-f]{12}\) \(fix: .*\)", status.message)


def test_a_peers_internal_error_stays_internal_and_is_not_retryable() -> None:
    back = error_from_status(status_pb2.Status(code=code_pb2.INTERNAL, message="bug"))
    assert isinstance(back, Internal)
    foreign = error_from_status(status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message="old"))
    assert not isinstance(foreign, Unavailable)
    assert status_from_error(foreign).code == code_pb2.INTERNAL


def test_async_handlers_map_domain_errors_to_their_status() -> None:
    class Servicer:
        @handle_errors
        async def Unary(self, request: object, context: object) -> None:
            raise InvalidArgument("owner has a NUL byte", field="owner", fix="remove it")

        @handle_errors
        async def Stream(self, request: object, context: object) -> AsyncIterator[int]:
            yield 1
            raise ResourceExhausted("too many watchers", fix="retry later")

    class Context:
        def __init__(self) -> None:
            self.aborted: tuple[grpc.StatusCode, str] | None = None

        async def abort(self, code: grpc.StatusCode, details: str, metadata: object) -> None:
            self.aborted = (code, details)
            raise grpc.aio.AbortError()

    async def run() -> tuple[object, object, list[int]]:
        unary, stream = Context(), Context()
        with pytest.raises(grpc.aio.AbortError):
            await Servicer().Unary(None, unary)
        received: list[int] = []
        with pytest.raises(grpc.aio.AbortError):
            async for item in Servicer().Stream(None, stream):
                received.append(item)
        return unary.aborted, stream.aborted, received

    unary, stream, received = asyncio.run(run())
    assert unary == (grpc.StatusCode.INVALID_ARGUMENT, "owner has a NUL byte (fix: remove it)")
    assert stream == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many watchers (fix: retry later)")
    assert received == [1]
