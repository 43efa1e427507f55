"""Domain errors survive the trip through a gRPC status and back, details included."""

from __future__ import annotations

from google.rpc import code_pb2, error_details_pb2
from mistudio_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from mistudio_common.grpc_errors import error_from_status, status_from_error


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
