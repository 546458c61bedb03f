"""A live registry of service instances, from NATS heartbeats plus the configured addresses.

The configured address of each service is always a candidate (so the stack works with
NATS down); instances that announce themselves join it. Calls go to healthy instances,
least loaded first; an instance that failed a call is avoided for a while.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from grpc import aio

from voicebus.bus import HEARTBEAT_SUBJECTS, EventBus
from voicebus.config import CommonSettings
from voicebus.grpc_client import open_channel
from voicebus.v1 import events_pb2

log = logging.getLogger(__name__)


@dataclass
class Instance:
    address: str
    instance_id: str = ""
    load: float = 0.0
    expires_at: float = 0.0  # heartbeat validity; 0 = configured, never expires
    draining: bool = False
    failed_until: float = 0.0


class ServiceRegistry:
    def __init__(self, settings: CommonSettings, retry_seconds: float) -> None:
        self.settings = settings
        self.retry_seconds = retry_seconds
        self.configured = {"stt": settings.stt_addr, "llm": settings.llm_addr, "tts": settings.tts_addr}
        self.instances: dict[str, dict[str, Instance]] = {
            service: {address: Instance(address)} for service, address in self.configured.items()}
        self._channels: dict[str, aio.Channel] = {}

    async def watch(self, bus: EventBus) -> None:
        """Follow heartbeats once NATS is connected."""
        await bus.subscribe(HEARTBEAT_SUBJECTS, self._on_heartbeat)

    async def _on_heartbeat(self, msg) -> None:  # type: ignore[no-untyped-def]
        beat = events_pb2.ServiceHeartbeat()
        try:
            beat.ParseFromString(msg.data)
        except Exception:  # noqa: BLE001 - a malformed heartbeat is ignored
            return
        self.observe(beat)

    def observe(self, beat: events_pb2.ServiceHeartbeat) -> None:
        if beat.service not in self.instances or not beat.address:
            return
        known = self.instances[beat.service]
        instance = known.get(beat.address)
        if instance is None:
            instance = known[beat.address] = Instance(beat.address)
            log.info("instance joined", extra={"fields": {"service": beat.service, "address": beat.address}})
        instance.instance_id = beat.instance_id
        instance.load = beat.load
        instance.draining = beat.status == events_pb2.SERVICE_STATUS_DRAINING
        if beat.address != self.configured[beat.service]:
            instance.expires_at = time.monotonic() + (beat.ttl_seconds or 6.0)

    def candidates(self, service: str) -> list[str]:
        """Addresses to try in order: healthy least-loaded first, recently failed last."""
        now = time.monotonic()
        live = [i for i in self.instances[service].values()
                if (i.expires_at == 0 or i.expires_at > now) and not i.draining]
        healthy = sorted((i for i in live if i.failed_until <= now), key=lambda i: (i.load, i.address))
        failed = sorted((i for i in live if i.failed_until > now), key=lambda i: i.failed_until)
        ordered = [i.address for i in healthy + failed]
        return ordered or [self.configured[service]]

    def mark_failed(self, service: str, address: str) -> None:
        instance = self.instances[service].get(address)
        if instance:
            instance.failed_until = time.monotonic() + self.retry_seconds
            log.warning("instance failed a call; trying others first",
                        extra={"fields": {"service": service, "address": address}})

    def mark_ok(self, service: str, address: str) -> None:
        instance = self.instances[service].get(address)
        if instance:
            instance.failed_until = 0.0

    def channel(self, address: str) -> aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_channel(address, self.settings)
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
