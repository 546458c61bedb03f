"""`python -m orchestrator`: the Assistant gRPC service (conversations, turn pipeline, NATS events)."""

from __future__ import annotations

import asyncio
import logging

from grpc import aio

from orchestrator.conversations import Conversations
from orchestrator.events import TurnEvents
from orchestrator.lease import TurnLeases
from voicebus.registry import ServiceRegistry
from orchestrator.server import AssistantServicer
from orchestrator.settings import OrchestratorSettings
from orchestrator.store import ConversationStore, StoreError, open_store
from orchestrator.recorder import Deps
from voicebus.bus import EventBus
from voicebus.grpc_server import announced_address, run_service, start_process
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc

log = logging.getLogger("orchestrator")
# How often the turns of a replica that stopped mid-turn are failed (a cheap query on an index).
ABANDONED_SWEEP_SECONDS = 5.0


async def open_conversations(settings: OrchestratorSettings) -> ConversationStore:
    """The store, migrated, with what a stopped orchestrator left unfinished failed; a store that
    cannot be opened stops the process with one line saying why."""
    try:
        store = await open_store(settings.store_url(), pool_size=settings.database_pool_size,
                                 timeout=settings.database_timeout_seconds)
        before, after = store.schema
        if before != after:
            log.info("conversation store migrated", extra={"fields": {"from_version": before, "to_version": after}})
        if failed := await store.fail_unfinished():
            log.warning("turns left unfinished by a previous run marked failed", extra={"fields": {"turns": failed}})
    except StoreError as exc:
        raise SystemExit(f"orchestrator: {exc.message}") from None
    return store


async def fail_abandoned_turns(store: ConversationStore, every: float = ABANDONED_SWEEP_SECONDS) -> None:
    """Another orchestrator killed mid-turn leaves its turn without an outcome, and nobody restarts
    it: the survivors fail such turns (store.fail_abandoned) while they run."""
    while True:
        await asyncio.sleep(every)
        try:
            if failed := await store.fail_abandoned():
                log.warning("turns of a stopped orchestrator marked failed", extra={"fields": {"turns": failed}})
        except StoreError as exc:  # the store is down: the turns wait for the next sweep
            log.debug("abandoned turns not swept: %s", exc.message)
        except Exception:  # noqa: BLE001 - the sweep must outlive a surprise; it is tried again
            log.exception("abandoned turns not swept")


async def serve(settings: OrchestratorSettings) -> None:
    store = await open_conversations(settings)
    bus = EventBus(settings.nats_url, name="orchestrator-events")
    events = TurnEvents(bus)
    leases = TurnLeases(bus, settings.turn_lease_seconds,
                        holder=announced_address(settings.orchestrator_addr, settings.announce_host),
                        replicas=settings.nats_stream_replicas)
    bus.on_connect(leases.declare)
    await bus.start()
    registry = ServiceRegistry(settings, settings.instance_retry_seconds)
    watcher = asyncio.create_task(registry.watch(bus))
    sweeper = asyncio.create_task(fail_abandoned_turns(store))
    deps = Deps(settings=settings, store=store, registry=registry, events=events, conversations=Conversations(leases))

    def register(server: aio.Server) -> list[str]:
        assistant_pb2_grpc.add_AssistantServicer_to_server(AssistantServicer(deps), server)
        return [assistant_pb2.DESCRIPTOR.services_by_name["Assistant"].full_name]

    async def shutdown() -> None:
        watcher.cancel()
        sweeper.cancel()
        await bus.close()
        await registry.close()
        await store.close()

    await run_service(settings=settings, address=settings.orchestrator_addr, register=register, capacity=8,
                      on_drain=deps.conversations.drain, on_shutdown=shutdown)


def main() -> None:
    settings = OrchestratorSettings()
    start_process(settings)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
