"""The orchestrators behind the gateway: VOICEBUS_ORCHESTRATOR_ADDR plus every one that
announces itself in NATS heartbeats.

Heartbeats are checked as the orchestrator checks the services' (voicebus.registry: the
signature, the time, plausible values), because they decide where users' words and the
bearer token go. A new conversation goes to the next healthy orchestrator in turn; one that
failed a call is tried last for a while; a draining one (SIGTERM) gets nothing new. Any
orchestrator continues any conversation (the store is shared and the turn lease is in
NATS), so a WebSocket whose orchestrator died moves to another (web_gateway/ws.py) and a
REST call refused by a draining one is sent to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from voicebus.bus import EventBus
from voicebus.registry import ServiceRegistry
from voicebus.v1 import assistant_pb2_grpc
from web_gateway.settings import GatewaySettings

SERVICE = "orchestrator"


def elsewhere_first(exc: BaseException, started: bool) -> bool:
    """Whether a call that failed with `exc` may go to another orchestrator: one that is draining
    refused it before doing anything; one that could not be reached never saw it. `started`:
    the call may have begun its work (a turn), so only those two are safe to send again."""
    if not isinstance(exc, grpc.aio.AioRpcError) or exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (exc.details() or "").lower()
    if "draining" in details:
        return True
    never_reached = ("failed to connect", "connection refused", "connect failed", "no route to host")
    return not started or any(words in details for words in never_reached)


class Orchestrators:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.registry = ServiceRegistry(settings, settings.orchestrator_retry_seconds,
                                        configured={SERVICE: settings.orchestrator_addr})
        self._stubs: dict[str, assistant_pb2_grpc.AssistantStub] = {}
        self._bus: EventBus | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow orchestrator heartbeats (NATS down: the configured address alone)."""
        self._bus = EventBus(self.settings.nats_url, name="gateway-orchestrators", settings=self.settings)
        await self._bus.start()
        self._watcher = asyncio.create_task(self.registry.watch(self._bus))

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        if self._bus is not None:
            await self._bus.close()
        await self.registry.close()

    @property
    def configured_channel(self) -> grpc.aio.Channel:
        return self.registry.channel(self.settings.orchestrator_addr)

    def for_new(self) -> list[str]:
        """Orchestrators to try for a new stream or call, in order (the first differs each time)."""
        return self.registry.in_turn(SERVICE)

    def stub(self, address: str) -> Any:
        stub = self._stubs.get(address)
        if stub is None:
            stub = self._stubs[address] = assistant_pb2_grpc.AssistantStub(self.registry.channel(address))
        return stub

    def failed(self, address: str) -> None:
        self.registry.mark_failed(SERVICE, address)

    def ok(self, address: str) -> None:
        self.registry.mark_ok(SERVICE, address)

    async def call(self, method: str, request: Any, *, started: bool = True, **kwargs: Any) -> Any:
        """A unary call on the next orchestrator, sent on to the others while `elsewhere_first`
        says it may be (see there for `started`)."""
        addresses = self.for_new()
        for i, address in enumerate(addresses):
            try:
                reply = await getattr(self.stub(address), method)(request, **kwargs)
            except grpc.aio.AioRpcError as exc:
                if i + 1 < len(addresses) and elsewhere_first(exc, started):
                    self.failed(address)
                    continue
                raise
            self.ok(address)
            return reply
        raise AssertionError("unreachable: for_new() is never empty")
