"""An export's progress as a Server-Sent-Events stream that a client can resume.

Each event's id is the progress ``sequence``, which the service keeps strictly increasing per job
across restarts; a reconnecting EventSource sends the last id it saw as ``Last-Event-ID`` and
receives only newer messages. The terminal message is sent as an ``end`` event, after which the
stream closes (a browser's EventSource must then ``close()``, or it would reconnect); a
failure of the watch itself is sent as an ``error`` event with a problem body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_service_pb2 as epb

from mistudio_gateway.messages import to_json
from mistudio_gateway.problems import problem_from_rpc

TERMINAL_STATES = (ppb.JOB_STATE_SUCCEEDED, ppb.JOB_STATE_FAILED, ppb.JOB_STATE_CANCELLED)
RETRY_MILLISECONDS = 1000
"""How soon a browser reconnects after the connection drops."""
KEEPALIVE_SECONDS = 15.0
"""Longest silence on a progress stream; common proxies drop idle connections after 30–60 s."""


def format_event(event: str, data: object, event_id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


def parse_last_event_id(value: str | None) -> int:
    """The sequence a client has seen; anything unparsable means 'nothing seen yet'."""
    try:
        return int(value) if value else -1
    except ValueError:
        return -1


async def progress_events(
    watch: grpc.aio.UnaryStreamCall, last_seen: int, keepalive_seconds: float = KEEPALIVE_SECONDS
) -> AsyncIterator[str]:
    """SSE text for the messages of ``watch`` newer than ``last_seen``, and always the last one.

    The terminal message goes out even when already seen, so a client reattaching to a finished
    job learns it is over and stops reconnecting. A quiet stage gets a comment line every
    ``keepalive_seconds`` so that proxies keep the connection. The watch is cancelled when the
    client leaves.
    """
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for message in watch:
                await queue.put(message)
        except grpc.RpcError as error:
            await queue.put(error)
        await queue.put(None)

    reader = asyncio.create_task(pump())
    try:
        yield f"retry: {RETRY_MILLISECONDS}\n\n"
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive_seconds)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if isinstance(item, grpc.RpcError):
                yield format_event("error", problem_from_rpc(item).body())
                return
            if not isinstance(item, epb.ExportProgress):
                return  # the watch ended early (service stopping): the client reconnects
            sequence = item.progress.sequence
            terminal = item.progress.state in TERMINAL_STATES
            if sequence <= last_seen and not terminal:
                continue
            yield format_event("end" if terminal else "progress", to_json(item), sequence)
            if terminal:
                return
    finally:
        reader.cancel()
        watch.cancel()
