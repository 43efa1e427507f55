"""Reading the gateway's answers as a client would: SSE events, start bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from google.protobuf import json_format
from mistudio.common.v1 import tokens_pb2 as tpb


@dataclass
class Event:
    name: str
    id: int | None
    data: dict[str, Any]


def read_events(response: httpx.Response) -> Iterator[Event]:
    """Parses a text/event-stream body as it arrives."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line:
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")
            continue
        if "data" in fields:
            event_id = int(fields["id"]) if "id" in fields else None
            yield Event(fields.get("event", "message"), event_id, json.loads(fields["data"]))
        fields = {}


def start_body(tokens: tpb.TokenSource, request_id: str, **dashboard: int) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "config": {
            "tokens": json_format.MessageToDict(tokens, preserving_proto_field_name=True),
            "dashboard": dashboard,
            "device": "cpu",
        },
    }


def follow(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> list[Event]:
    with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(read_events(response))
