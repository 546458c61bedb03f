"""Two races of grpcio's asyncio client against a server that ends a client stream early
(grpc/grpc#36066): the client's write that loses the race turned the server's status into
INTERNAL ("Internal error from Core"). Both were CI flakes; each test repeats the race
enough times to lose it without the fix (measured: 2/300 and 298/300)."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter

import grpc
from grpc import aio

from voicebus.auth import BearerAuthServerInterceptor, bearer_client_interceptors
from voicebus.config import CommonSettings
from voicebus.grpc_client import open_channel
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc

TOKEN = "tok-" + secrets.token_urlsafe(16)
CALLS = 300


class RefusingAssistant(assistant_pb2_grpc.AssistantServicer):
    """Echoes; with `refuse_after`, ends the stream with INVALID_ARGUMENT at that message,
    as STT does with audio it cannot decode."""

    def __init__(self, refuse_after: int = 0) -> None:
        self.refuse_after = refuse_after

    async def Converse(self, requests, context):  # noqa: N802, ANN001
        count = 0
        async for _ in requests:
            count += 1
            if count == self.refuse_after:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the bytes are not audio")
            yield assistant_pb2.ConverseResponse()


async def serve(servicer: RefusingAssistant, *interceptors: aio.ServerInterceptor) -> tuple[aio.Server, str]:
    server = aio.server(interceptors=list(interceptors))
    assistant_pb2_grpc.add_AssistantServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def status_of(call) -> str:  # noqa: ANN001
    try:
        async for _ in call:
            pass
    except aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


async def test_a_wrong_token_on_a_client_stream_is_always_unauthenticated():
    """The client writes once and waits (as `voicebus talk` does); the refusal comes after
    that write has arrived, so it can no longer race it."""
    server, address = await serve(RefusingAssistant(), BearerAuthServerInterceptor(TOKEN))
    codes: Counter[str] = Counter()
    try:
        for _ in range(CALLS):
            half_close = asyncio.Event()

            async def requests():
                yield assistant_pb2.ConverseRequest(text="hello")
                await half_close.wait()
            async with aio.insecure_channel(address, interceptors=bearer_client_interceptors("wrong")) as channel:
                codes[await status_of(assistant_pb2_grpc.AssistantStub(channel).Converse(requests(), timeout=10))] += 1
                half_close.set()
    finally:
        await server.stop(0)
    assert codes == {"UNAUTHENTICATED": CALLS}


async def test_a_refusal_in_the_middle_of_a_stream_of_writes_keeps_its_status():
    """The orchestrator pours audio into STT, which refuses it at the first chunk: the
    orchestrator must see INVALID_ARGUMENT (the user's input), not a retryable INTERNAL."""
    server, address = await serve(RefusingAssistant(refuse_after=1))
    codes: Counter[str] = Counter()

    async def requests():
        for _ in range(50):
            yield assistant_pb2.ConverseRequest(audio=b"definitely not audio " * 100)
    try:
        async with open_channel(address, CommonSettings()) as channel:
            for _ in range(CALLS):
                codes[await status_of(assistant_pb2_grpc.AssistantStub(channel).Converse(requests(), timeout=10))] += 1
    finally:
        await server.stop(0)
    assert codes == {"INVALID_ARGUMENT": CALLS}
