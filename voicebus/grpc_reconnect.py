"""Reconnecting quickly to a service that restarted.

gRPC channels reconnect with exponential backoff, by default up to 120 s between attempts:
after a 10 / 60 / 150 s outage calls kept failing for 1.95 / 14 / 33 s once the service was
back. `RECONNECT_OPTIONS` caps the gap between attempts at 1 s. A call made while the channel
sits in TRANSIENT_FAILURE between two attempts would still fail at once with the old outage's
error, although the service may already be up again; `reconnect_interceptors` make such a
call wait for the next attempt (at most one capped backoff) and then go ahead, so the first
call after a service is healthy again succeeds. A service that is really down costs a call at
most that wait before its UNAVAILABLE (and the caller's failover).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc import aio

MAX_RECONNECT_BACKOFF_MS = 1_000
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    # Not a backoff despite its name: how long one connection attempt may take (default 20 s).
    # 5 s still fits a TLS handshake on a loaded machine, and an address that swallows packets
    # is tried again sooner.
    ("grpc.min_reconnect_backoff_ms", 5_000),
]
# gRPC spreads each backoff by ±20 %; the wait covers the longest one with a margin.
RECONNECT_WAIT_SECONDS = MAX_RECONNECT_BACKOFF_MS / 1000 * 1.2 + 0.3


class _AwaitReconnect:
    def __init__(self, holder: "ReconnectWait") -> None:
        self._holder = holder


class ReconnectWait:
    """The channel a set of interceptors belongs to (known only after the channel exists)."""

    def __init__(self) -> None:
        self.channel: aio.Channel | None = None

    async def settle(self) -> None:
        channel = self.channel
        if channel is None:
            return
        state = channel.get_state(try_to_connect=False)
        if state != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return  # READY, or IDLE/CONNECTING: the call itself waits for the connection attempt
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(channel.wait_for_state_change(state), RECONNECT_WAIT_SECONDS)


class _UnaryUnary(_AwaitReconnect, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        await self._holder.settle()
        return await continuation(details, request)


class _UnaryStream(_AwaitReconnect, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        await self._holder.settle()
        return await continuation(details, request)


class _StreamUnary(_AwaitReconnect, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        await self._holder.settle()
        return await continuation(details, request_iterator)


class _StreamStream(_AwaitReconnect, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        await self._holder.settle()
        return await continuation(details, request_iterator)


def reconnect_interceptors(holder: ReconnectWait) -> list[Any]:
    return [_UnaryUnary(holder), _UnaryStream(holder), _StreamUnary(holder), _StreamStream(holder)]
