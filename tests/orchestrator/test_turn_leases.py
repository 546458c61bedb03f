"""Turn leases (orchestrator/lease.py) against a real NATS: a lease is gone when its turn ends,
also when a renewal was under way then, and one this process failed to delete does not refuse
its own next turn for the TTL. Two TurnLeases with different holders stand for two replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import nats.errors
import pytest

from orchestrator.lease import TurnLeases
from voicebus.bus import EventBus
from voicebus.config import CommonSettings

LEASE_SECONDS = 1.5  # renewed every 0.5 s


@pytest.fixture
async def replicas(nats_url) -> AsyncIterator[Callable[[str], TurnLeases]]:
    buses: list[EventBus] = []

    async def replica(holder: str) -> TurnLeases:
        bus = EventBus(nats_url, name=holder, settings=CommonSettings(nats_url=nats_url))
        leases = TurnLeases(bus, LEASE_SECONDS, holder)
        bus.on_connect(leases.declare)  # as orchestrator/__main__.py does
        buses.append(bus)
        await bus.start()
        assert await bus.wait_connected(10)
        return leases
    yield replica
    for bus in buses:
        await bus.close()


async def test_a_renewal_under_way_when_the_turn_ends_does_not_leave_the_lease(replicas) -> None:
    a, b = await replicas("orchestrator-a:1"), await replicas("orchestrator-b:1")
    kv = a._kv  # noqa: SLF001
    assert kv is not None
    renew, landed = kv.update, asyncio.Event()

    async def late_answer(*args, **kwargs) -> int:
        revision = await renew(*args, **kwargs)  # the server has the renewal...
        landed.set()
        await asyncio.sleep(0.5)  # ...and its answer is slow to come back
        return revision
    kv.update = late_answer  # type: ignore[method-assign]
    assert await a.acquire("c-renewed", "t1")
    await asyncio.wait_for(landed.wait(), 10)
    await a.release("c-renewed", "t1")  # while that answer is on its way
    assert await b.acquire("c-renewed", "t2"), "the ended turn's lease was left for its TTL"
    await b.release("c-renewed", "t2")


async def test_its_own_undeleted_lease_does_not_refuse_the_next_turn(replicas) -> None:
    a, b = await replicas("orchestrator-a:2"), await replicas("orchestrator-b:2")
    kv = a._kv  # noqa: SLF001
    assert kv is not None
    delete = kv.delete

    async def no_answer(*args, **kwargs) -> bool:
        raise nats.errors.TimeoutError
    kv.delete = no_answer  # type: ignore[method-assign]
    assert await a.acquire("c-own", "t1")
    await a.release("c-own", "t1")  # "turn lease not deleted": it would last its TTL
    kv.delete = delete  # type: ignore[method-assign]
    assert not await b.acquire("c-own", "t2")  # another replica cannot know it is stale: it waits
    assert await a.acquire("c-own", "t3")  # the process that wrote it knows no turn of its runs there
    await a.release("c-own", "t3")
    assert await b.acquire("c-own", "t4")
    await b.release("c-own", "t4")
