"""A start repeated under its request id: the same request gets the job it started before, a
different one is ALREADY_EXISTS naming the fields that differ (a reused id must never silently
return the job of another request). The store's export jobs and compute's computations share
this rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from mistudio_common.errors import AlreadyExists


def differing_fields(old: Message, new: Message, path: str) -> list[str]:
    """Dotted paths (under ``path``) of the fields whose values differ between two messages of
    one type; unset and default values count as equal."""
    return _differing_paths(_document(old), _document(new), path)


def refuse_a_different_request(
    request_id: str, job_id: str, differences: Sequence[str], *, field: str
) -> None:
    """ALREADY_EXISTS when ``differences`` is not empty: the request is not the one that
    started ``job_id``."""
    if differences:
        raise AlreadyExists(
            f"request_id {request_id!r} was used for job {job_id} with a different request; "
            f"differing fields: {', '.join(differences)}",
            field=field,
            fix="use a new request_id for a different request, or repeat the original request",
        )


def _document(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _differing_paths(old: object, new: object, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            found
            for key in sorted(old.keys() | new.keys())
            for found in _differing_paths(old.get(key), new.get(key), f"{path}.{key}")
        ]
    return [] if old == new else [path]
