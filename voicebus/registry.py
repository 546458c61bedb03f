"""A live registry of service instances, from NATS heartbeats plus the configured addresses.

The configured address of each service is always a candidate (so the stack works with
NATS down); instances that announce themselves join it. The orchestrator follows STT, LLM
and TTS with it; the gateway follows orchestrators (`configured={"orchestrator": ...}`). Calls go to healthy instances,
least loaded first; an instance that failed a call is avoided for a while.

A heartbeat decides where the user's words and the bearer token go next, so one is
believed only when it is verifiable: with a heartbeat key (VOICEBUS_HEARTBEAT_KEY, or the
one derived from the token) its `Voicebus-Signature` must match, its time must be recent
and newer than that instance's last one (no replays); and always its subject must be its
service's and its numbers plausible (a `load=-1` would win every call). A heartbeat that
fails any check changes nothing, not even a configured instance's load or status.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from grpc import aio

from voicebus.bus import (
    SIGNATURE_HEADER, EventBus, heartbeat_key, heartbeat_subject, signature_valid,
)
from voicebus.config import CommonSettings
from voicebus.grpc_client import open_channel
from voicebus.v1 import events_pb2

log = logging.getLogger(__name__)

# How far a heartbeat's own clock may be from ours (machines drift; NTP keeps them far closer).
MAX_CLOCK_SKEW_SECONDS = 30.0
# Longer TTLs are cut to this: a dead instance is forgotten within a minute whatever it claimed.
MAX_TTL_SECONDS = 60.0
# load is in_flight / capacity; a thousand times over capacity is a lie, not a load.
MAX_LOAD = 1000.0
_MAX_TRACKED = 1000  # bounds on per-instance memory, whatever a sender invents


@dataclass
class Instance:
    address: str
    instance_id: str = ""
    load: float = 0.0
    expires_at: float = 0.0  # heartbeat validity; 0 = configured, never expires
    draining: bool = False
    failed_until: float = 0.0


def _plausible_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host) and len(address) <= 255 and port.isdigit() and 0 < int(port) < 65536


def implausible(beat: events_pb2.ServiceHeartbeat) -> str | None:
    """Why the heartbeat's values cannot be true, or None."""
    if not _plausible_address(beat.address):
        return "address is not host:port"
    if not math.isfinite(beat.load) or not 0.0 <= beat.load <= MAX_LOAD:
        return f"load {beat.load} outside 0..{MAX_LOAD:g}"
    if beat.in_flight < 0:
        return f"in_flight {beat.in_flight} below 0"
    if not math.isfinite(beat.ttl_seconds) or beat.ttl_seconds < 0:
        return f"ttl_seconds {beat.ttl_seconds} is not a duration"
    return None


class ServiceRegistry:
    def __init__(self, settings: CommonSettings, retry_seconds: float,
                 configured: dict[str, str] | None = None) -> None:
        """`configured`: service name -> its configured address; the services followed (default:
        the ones the orchestrator calls)."""
        self.settings = settings
        self.retry_seconds = retry_seconds
        self.configured = configured if configured is not None else {
            "stt": settings.stt_addr, "llm": settings.llm_addr, "tts": settings.tts_addr}
        self.instances: dict[str, dict[str, Instance]] = {
            service: {address: Instance(address)} for service, address in self.configured.items()}
        self._channels: dict[str, aio.Channel] = {}
        self._key = heartbeat_key(settings)
        self._newest: dict[tuple[str, str], float] = {}  # (service, instance id) -> newest accepted beat time
        self._reported: set[tuple[str, str]] = set()
        self._turn: dict[str, int] = {}  # service -> where in_turn() starts next
        if self._key is None:
            log.warning("heartbeats are not signed (no VOICEBUS_HEARTBEAT_KEY or VOICEBUS_AUTH_TOKEN): discovered "
                        "instances are trusted on their NATS credentials alone")

    async def watch(self, bus: EventBus) -> None:
        """Follow heartbeats once NATS is connected."""
        # One subject per followed service: NATS permissions may allow just those (the gateway's do).
        for service in self.instances:
            await bus.subscribe(heartbeat_subject(service), self._on_heartbeat)

    async def _on_heartbeat(self, msg: Any) -> None:
        self.receive(msg.subject, msg.data, msg.headers)

    def receive(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> str | None:
        """Check one heartbeat message and observe it; the reason it was ignored, or None."""
        if not any(subject == heartbeat_subject(service) for service in self.instances):
            return "not a service followed here"  # e.g. the orchestrator's own heartbeat: nothing to report
        reason, beat = self._verify(subject, payload, headers)
        if reason is None:
            self.observe(beat)
        else:
            self._report(reason, subject, beat)
        return reason

    def _verify(self, subject: str, payload: bytes,
                headers: dict[str, str] | None) -> tuple[str | None, events_pb2.ServiceHeartbeat]:
        beat = events_pb2.ServiceHeartbeat()
        try:
            beat.ParseFromString(payload)  # parsed first only to name the sender in the log line
        except Exception:  # noqa: BLE001 - a malformed heartbeat is ignored
            return "malformed", events_pb2.ServiceHeartbeat()
        if self._key is not None and not signature_valid(self._key, subject, payload, headers):
            return ("unsigned" if not (headers or {}).get(SIGNATURE_HEADER) else "bad signature"), beat
        if subject != heartbeat_subject(beat.service):
            return f"service {beat.service[:32]!r} announced on {subject}", beat
        if reason := implausible(beat):
            return reason, beat
        if self._key is not None:
            if not beat.HasField("time"):
                return "no time", beat
            sent = beat.time.ToNanoseconds() / 1e9
            age = time.time() - sent
            if abs(age) > MAX_CLOCK_SKEW_SECONDS:
                return f"stale ({age:.0f} s old)", beat
            identity = (beat.service, beat.instance_id)
            if sent <= self._newest.get(identity, 0.0):
                return "replayed", beat
            if len(self._newest) >= _MAX_TRACKED:  # old entries are stale anyway
                cutoff = time.time() - MAX_CLOCK_SKEW_SECONDS
                self._newest = {k: v for k, v in self._newest.items() if v > cutoff}
            self._newest[identity] = sent
        return None, beat

    def _report(self, reason: str, subject: str, beat: events_pb2.ServiceHeartbeat) -> None:
        # Once per sender and reason at WARNING (an attacker must not flood the log), then DEBUG.
        key = (reason.split(" (")[0], f"{subject} {beat.address}")
        first = key not in self._reported and len(self._reported) < _MAX_TRACKED
        if first:
            self._reported.add(key)
        log.log(logging.WARNING if first else logging.DEBUG, "heartbeat ignored: %s", reason, extra={"fields": {
            "subject": subject, "address": beat.address[:255], "instance_id": beat.instance_id[:128],
            "reason": reason}})

    def observe(self, beat: events_pb2.ServiceHeartbeat) -> None:
        """Take a heartbeat that is already trusted (receive() checks them)."""
        if beat.service not in self.instances or implausible(beat):
            return
        known = self.instances[beat.service]
        instance = known.get(beat.address)
        if instance is None:
            self._forget_expired(beat.service)
            instance = known[beat.address] = Instance(beat.address)
            log.info("instance joined", extra={"fields": {"service": beat.service, "address": beat.address}})
        instance.instance_id = beat.instance_id
        instance.load = beat.load
        instance.draining = beat.status == events_pb2.SERVICE_STATUS_DRAINING
        if beat.address != self.configured[beat.service]:
            instance.expires_at = time.monotonic() + min(beat.ttl_seconds or 6.0, MAX_TTL_SECONDS)

    def _forget_expired(self, service: str) -> None:
        now = time.monotonic()
        known = self.instances[service]
        for address in [a for a, i in known.items() if i.expires_at and i.expires_at + MAX_TTL_SECONDS < now]:
            del known[address]

    def _live(self, service: str) -> tuple[list[Instance], list[Instance]]:
        """(healthy least-loaded first, recently failed soonest-retried first); neither expired nor draining."""
        now = time.monotonic()
        live = [i for i in self.instances[service].values()
                if (i.expires_at == 0 or i.expires_at > now) and not i.draining]
        healthy = sorted((i for i in live if i.failed_until <= now), key=lambda i: (i.load, i.address))
        failed = sorted((i for i in live if i.failed_until > now), key=lambda i: i.failed_until)
        return healthy, failed

    def candidates(self, service: str) -> list[str]:
        """Addresses to try in order: healthy least-loaded first, recently failed last."""
        healthy, failed = self._live(service)
        return [i.address for i in healthy + failed] or [self.configured[service]]

    def in_turn(self, service: str) -> list[str]:
        """Like candidates, but each call starts at the next healthy instance (round robin). For
        what lasts longer than a heartbeat interval (a conversation): several started within one
        interval would all see the same loads and go to the same instance."""
        healthy, failed = self._live(service)
        healthy.sort(key=lambda i: i.address)
        if healthy:
            start = self._turn.get(service, 0) % len(healthy)
            self._turn[service] = start + 1
            healthy = healthy[start:] + healthy[:start]
        return [i.address for i in healthy + failed] or [self.configured[service]]

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
