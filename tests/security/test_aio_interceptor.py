"""The asyncio interceptor authenticates like the sync one (for a grpc.aio server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from mistudio_common.auth import Credentials, Identity, PeerCredentials, Role, current_caller
from mistudio_common.auth_interceptor import AioAuthInterceptor, _aio_stream

ALICE = Identity("alice", Role.USER)
CREDENTIALS = Credentials(
    identities={"alice": ALICE}, tokens={"tok-alice": ALICE}, tls=None, peer=PeerCredentials()
)


async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return current_caller().name.encode()


async def who_twice(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(2):
        await asyncio.sleep(0)
        yield current_caller().name.encode()


async def internal(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"written"


HANDLERS = grpc.method_handlers_generic_handler(
    "test.Who",
    {
        "Who": grpc.unary_unary_rpc_method_handler(who),
        "WhoTwice": grpc.unary_stream_rpc_method_handler(who_twice),
        "Internal": grpc.unary_unary_rpc_method_handler(internal),
    },
)


async def call(method: str, token: str | None) -> list[bytes]:
    server = grpc.aio.server(
        interceptors=[AioAuthInterceptor(CREDENTIALS, frozenset({"/test.Who/Internal"}))]
    )
    server.add_generic_rpc_handlers([HANDLERS])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            if method == "WhoTwice":
                stream = channel.unary_stream(f"/test.Who/{method}")(b"", metadata=metadata)
                return [reply async for reply in stream]
            return [await channel.unary_unary(f"/test.Who/{method}")(b"", metadata=metadata)]
    finally:
        await server.stop(0)


def test_aio_unary_and_stream_handlers_see_the_authenticated_caller() -> None:
    assert asyncio.run(call("Who", "tok-alice")) == [b"alice"]
    assert asyncio.run(call("WhoTwice", "tok-alice")) == [b"alice", b"alice"]


@pytest.mark.parametrize(
    ("method", "token", "code"),
    [
        ("Who", None, grpc.StatusCode.UNAUTHENTICATED),
        ("WhoTwice", "tok-wrong", grpc.StatusCode.UNAUTHENTICATED),
        ("Internal", "tok-alice", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_aio_refuses_like_the_sync_interceptor(
    method: str, token: str | None, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(call(method, token))
    assert caught.value.code() == code


def test_a_stream_closed_outside_its_task_unbinds_its_caller_quietly() -> None:
    """At shutdown (Ctrl-C) the event loop closes a suspended stream's generator from another
    task: the caller was bound in the stream's own task's context, so nothing is left to reset
    and closing must not fail (it was logged with a traceback)."""

    async def scenario() -> bytes:
        stream = _aio_stream(who_twice, lambda context: ALICE)(b"", None)
        first = await asyncio.create_task(anext(stream))  # in that task's context
        await stream.aclose()  # in this one
        return first

    assert asyncio.run(scenario()) == b"alice"
