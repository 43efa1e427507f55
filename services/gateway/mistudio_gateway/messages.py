"""Protobuf messages as the gateway's JSON: proto3 JSON with the .proto's snake_case names."""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from mistudio_gateway.problems import Problem, bad_request

M = TypeVar("M", bound=Message)


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def from_json(body: dict[str, Any], message: M, *, what: str) -> M:
    """Parses a request body; a wrong field or value is a 400 naming it."""
    try:
        return json_format.ParseDict(body, message)
    except json_format.ParseError as error:
        raise ProblemError(
            bad_request(
                f"the body is not a valid {what}: {error}",
                field="body",
                fix=f"send {what} as proto3 JSON (see the OpenAPI document at /docs)",
            )
        ) from None


class ProblemError(Exception):
    """Raised by a route to answer with a problem+json response."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.problem = problem
