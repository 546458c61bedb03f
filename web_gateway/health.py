"""Readiness: the gateway is ready when a turn sent now would be served.

The orchestrator is asked over the gateway's own channel, the one every turn takes: a fresh
channel answered SERVING while that channel was still waiting out a reconnect backoff and
turns failed. The services the orchestrator calls answer on their addresses; since every
channel waits for a reconnect in progress (voicebus.grpc_reconnect), a service that answers
here is one the orchestrator's next call reaches.
"""

from __future__ import annotations

import asyncio

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from voicebus.health import grpc_health
from web_gateway.settings import GatewaySettings


async def channel_health(channel: aio.Channel, timeout: float) -> str:
    """Like voicebus.health.grpc_health, over an existing channel."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except aio.AioRpcError as exc:
        return f"{exc.code().name}: {((exc.details() or '').splitlines() or [''])[0][:80]}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def readiness(settings: GatewaySettings,
                    orchestrator_channel: aio.Channel | None = None) -> dict[str, dict[str, str]]:
    timeout = settings.readiness_timeout_seconds
    targets = {"orchestrator": settings.orchestrator_addr, "stt": settings.stt_addr,
               "llm": settings.llm_addr, "tts": settings.tts_addr}
    probes = [channel_health(orchestrator_channel, timeout) if orchestrator_channel is not None
              else grpc_health(settings.orchestrator_addr, settings, timeout)]
    probes += [grpc_health(addr, settings, timeout) for name, addr in targets.items() if name != "orchestrator"]
    statuses = await asyncio.gather(*probes)
    return {name: {"address": addr, "status": status}
            for (name, addr), status in zip(targets.items(), statuses, strict=True)}
