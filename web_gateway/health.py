"""Readiness: the gateway is ready when the orchestrator and the services it needs answer
their gRPC health checks."""

from __future__ import annotations

import asyncio

from voicebus.health import grpc_health
from web_gateway.settings import GatewaySettings


async def readiness(settings: GatewaySettings) -> dict[str, dict[str, str]]:
    targets = {"orchestrator": settings.orchestrator_addr, "stt": settings.stt_addr,
               "llm": settings.llm_addr, "tts": settings.tts_addr}
    statuses = await asyncio.gather(*(grpc_health(addr, settings, settings.readiness_timeout_seconds)
                                      for addr in targets.values()))
    return {name: {"address": addr, "status": status}
            for (name, addr), status in zip(targets.items(), statuses, strict=True)}
