"""NATS for events and heartbeats, never on a turn's critical path.

`EventBus.publish` only enqueues: a background task sends when NATS is connected, so a
slow or absent NATS degrades events, not conversations. The connection is retried for
ever, and messages queued meanwhile (up to a bound) are sent after it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client

from voicebus.v1 import events_pb2

log = logging.getLogger(__name__)

TURN_STREAM = "VOICEBUS_TURNS"
TURN_SUBJECTS = "voicebus.turn.>"
HEARTBEAT_SUBJECTS = "voicebus.service.*.heartbeat"


def heartbeat_subject(service: str) -> str:
    return f"voicebus.service.{service}.heartbeat"


def turn_subject(conversation_id: str, stage: str) -> str:
    return f"voicebus.turn.{conversation_id}.{stage}"


@dataclass
class _Outgoing:
    subject: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)
    jetstream: bool = False


class EventBus:
    def __init__(self, url: str, name: str, max_queued: int = 1000) -> None:
        self.url = url
        self.name = name
        self.nc: Client | None = None
        self.dropped = 0
        self._queue: asyncio.Queue[_Outgoing] = asyncio.Queue(maxsize=max_queued)
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self._warned = False
        self._closing = False
        self._connect_hooks: list[Callable[[], Awaitable[None]]] = []

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._connect_loop()), asyncio.create_task(self._send_loop())]

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self.connected

    async def _connect_loop(self) -> None:
        delay = 0.2
        while self.nc is None:
            try:
                self.nc = await nats.connect(
                    [u.strip() for u in self.url.split(",") if u.strip()], name=self.name, allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=1, connect_timeout=2, error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected)
            except Exception as exc:  # noqa: BLE001 - any failure means "try again later"
                if not self._warned:
                    log.warning("NATS not reachable at %s (%s); events wait until it is", self.url, exc)
                    self._warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        log.info("connected to NATS", extra={"fields": {"url": self.url}})
        await self._run_connect_hooks()
        self._connected.set()

    def on_connect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` after the first connect and after every reconnect (e.g. to declare streams)."""
        self._connect_hooks.append(hook)

    async def _run_connect_hooks(self) -> None:
        for hook in self._connect_hooks:
            try:
                await hook()
            except Exception as exc:  # noqa: BLE001 - a hook failing must not stop the bus
                log.warning("NATS connect hook failed: %s", exc)

    async def subscribe(self, subject: str, cb: Callable[..., Awaitable[None]]) -> None:
        """Subscribe once connected (nats.py re-subscribes by itself after reconnects)."""
        await self._connected.wait()
        assert self.nc is not None
        await self.nc.subscribe(subject, cb=cb)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS error: %s", exc)

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if not self._closing:
            log.warning("NATS disconnected; events are queued until it is back")

    async def _on_reconnected(self) -> None:
        log.info("NATS reconnected")
        await self._run_connect_hooks()
        self._connected.set()

    def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None,
                jetstream: bool = False) -> None:
        """Queue a message; never blocks. When the queue is full the oldest is dropped."""
        item = _Outgoing(subject, payload, dict(headers or {}), jetstream)
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.dropped += 1

    async def _send_loop(self) -> None:
        while True:
            item = await self._queue.get()
            attempts = 0
            while True:
                await self._connected.wait()
                assert self.nc is not None
                try:
                    if item.jetstream:
                        await self.nc.jetstream().publish(item.subject, item.payload, headers=item.headers or None,
                                                          timeout=2)
                    else:
                        await self.nc.publish(item.subject, item.payload, headers=item.headers or None)
                    break
                except Exception as exc:  # noqa: BLE001 - retried, then given up on
                    attempts += 1
                    if attempts >= 5 and self.connected:
                        self.dropped += 1
                        log.warning("dropping event for %s after %d failed publishes: %s", item.subject, attempts, exc)
                        break
                    await asyncio.sleep(0.5)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until queued messages are handed to NATS (for shutdown and tests)."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.connected and self.nc:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=max(0.1, deadline - time.monotonic()))

    async def send_heartbeat(self, *, service: str, instance_id: str, address: str, capabilities: list[str],
                             in_flight: int, load: float, draining: bool = False, ttl: float = 6.0) -> None:
        now = Timestamp()
        now.GetCurrentTime()
        status = events_pb2.SERVICE_STATUS_DRAINING if draining else events_pb2.SERVICE_STATUS_SERVING
        beat = events_pb2.ServiceHeartbeat(service=service, instance_id=instance_id, address=address,
                                           status=status, in_flight=in_flight, load=load, time=now,
                                           ttl_seconds=ttl, capabilities=capabilities)
        if draining:
            # Sent directly so that it goes out before the process exits.
            if self.connected and self.nc:
                with contextlib.suppress(Exception):
                    await self.nc.publish(heartbeat_subject(service), beat.SerializeToString())
                    await self.nc.flush(timeout=1)
            return
        self.publish(heartbeat_subject(service), beat.SerializeToString())

    async def heartbeat_loop(self, *, service: str, instance_id: str, address: str, interval: float,
                             capabilities: list[str], load: Callable[[], tuple[int, float]]) -> None:
        while True:
            if self.connected:
                in_flight, current = load()
                await self.send_heartbeat(service=service, instance_id=instance_id, address=address,
                                          capabilities=capabilities, in_flight=in_flight, load=current,
                                          ttl=interval * 3)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        await self.flush(timeout=1.0)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
