"""Readiness: the gateway is ready when the orchestrator and the services it needs answer
their gRPC health checks."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from voicebus.grpc_client import open_channel
from web_gateway.settings import GatewaySettings


async def check_grpc_health(address: str, settings: GatewaySettings, timeout: float) -> str:
    """`SERVING`, another health status name, or `UNAVAILABLE: <reason>`."""
    async with open_channel(address, settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def readiness(settings: GatewaySettings) -> dict[str, dict[str, str]]:
    targets = {"orchestrator": settings.orchestrator_addr, "stt": settings.stt_addr,
               "llm": settings.llm_addr, "tts": settings.tts_addr}
    statuses = await asyncio.gather(*(check_grpc_health(addr, settings, settings.readiness_timeout_seconds)
                                      for addr in targets.values()))
    return {name: {"address": addr, "status": status}
            for (name, addr), status in zip(targets.items(), statuses, strict=True)}
