"""Bearer-token auth between services: `authorization: Bearer <token>` gRPC metadata.

Active only when `VOICEBUS_AUTH_TOKEN` is set. The health service stays open so that
load balancers and container healthchecks need no secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
# A refused client stream is ended after its first message arrives (or this long): a Python
# asyncio client's write that loses the race with the refusal would report INTERNAL
# ("Internal error from Core") instead of UNAUTHENTICATED (grpc/grpc#36066).
FIRST_MESSAGE_WAIT_SECONDS = 2.0


def bearer_matches(header_value: str | None, token: str) -> bool:
    """Constant-time check of an `Authorization` header value against the token."""
    if not header_value or not header_value.startswith("Bearer "):
        return False
    return hmac.compare_digest(header_value[len("Bearer "):].strip().encode(), token.encode())


async def _first_message(requests: AsyncIterator[Any]) -> None:
    with contextlib.suppress(StopAsyncIteration, asyncio.TimeoutError, grpc.RpcError):
        await asyncio.wait_for(requests.__anext__(), FIRST_MESSAGE_WAIT_SECONDS)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: aio.ServicerContext) -> Any:
        if handler.request_streaming:
            await _first_message(request)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request: Any, context: aio.ServicerContext) -> Any:
        await abort(request, context)
        yield  # pragma: no cover - makes this an async generator

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort)


class BearerAuthServerInterceptor(aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        value = metadata.get("authorization")
        if bearer_matches(value if isinstance(value, str) else None, self._token):
            return handler
        reason = "missing bearer token" if not value else "invalid bearer token"
        return _deny(handler, f"{reason}: send 'authorization: Bearer <VOICEBUS_AUTH_TOKEN>'")


class _BearerClientInterceptor:
    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        metadata = list(details.metadata or ()) + [self._metadata]
        return aio.ClientCallDetails(details.method, details.timeout, aio.Metadata(*metadata),
                                     details.credentials, details.wait_for_ready)


class _UnaryUnary(_BearerClientInterceptor, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class _UnaryStream(_BearerClientInterceptor, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class _StreamUnary(_BearerClientInterceptor, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request_iterator)


class _StreamStream(_BearerClientInterceptor, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request_iterator)


def bearer_client_interceptors(token: str) -> list[aio.ClientInterceptor]:
    return [_UnaryUnary(token), _UnaryStream(token), _StreamUnary(token), _StreamStream(token)]
