"""Health probes used by `voicebus up/status` and the gateway's /readyz."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from voicebus.config import CommonSettings
from voicebus.grpc_client import open_channel


async def grpc_health(address: str, settings: CommonSettings, timeout: float = 1.0) -> str:
    """`SERVING`, another health status name, or `<CODE>: <details>`."""
    async with open_channel(address, settings) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {(exc.details() or '').splitlines()[0][:80]}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def http_health(url: str, settings: CommonSettings, timeout: float = 1.0) -> str:
    headers = {"Authorization": f"Bearer {settings.token()}"} if settings.token() else {}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            reply = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        return f"UNAVAILABLE: {exc.__class__.__name__}"
    return "SERVING" if reply.status_code == 200 else f"HTTP {reply.status_code}"


async def tcp_open(address: str, timeout: float = 0.5) -> bool:
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), timeout)
    except (OSError, asyncio.TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True
