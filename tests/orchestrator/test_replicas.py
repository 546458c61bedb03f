"""Orchestrator replicas, black box: two `python -m orchestrator` processes on real ports, one
SQLite file (WAL) between them, a real NATS (each process logged in as its own role), the
scripted fakes of this folder as STT/LLM/TTS, and for the gateway cases `python -m web_gateway`.

- one running turn per conversation across replicas (the NATS lease): the other gets ABORTED;
- a holder killed with SIGKILL blocks its conversation no longer than the lease;
- the gateway spreads new conversations over the orchestrators it knows from heartbeats;
- a WebSocket whose orchestrator is killed moves to the other one: one `reconnected` event,
  and the next turn is answered there with the history of the first;
- SIGTERM drains: the running turn finishes, new work is refused UNAVAILABLE (the gateway
  sends it to the other), and the process exits 0.

Waits poll with deadlines; the LLM fake's `hold_after` keeps a turn running for as long as a
case needs it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc import aio
from websockets.asyncio.client import connect

from fake_services import FakeLLM, FakeServices, Reply
from gateway_stack import start_gateway
from helpers import NatsServer, ServiceProcess, free_port
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc, audio_pb2

LEASE_SECONDS = 2.0
FIRST_ANSWER = "Paris is the capital of France."
HELD_ANSWER = "This answer waits until the test lets it go on."


@pytest.fixture(scope="module")
def nats():
    server = NatsServer()
    yield server
    server.stop()


def held_llm() -> FakeLLM:
    """The first answer at once; every later one pauses after its first word until release()."""
    return FakeLLM([Reply.text(FIRST_ANSWER), Reply.text(HELD_ANSWER, hold_after=1)])


class Replicas:
    """Orchestrator processes sharing one data folder, and optionally a gateway in front."""

    def __init__(self, nats: NatsServer, fakes: FakeServices) -> None:
        self.nats, self.fakes = nats, fakes
        self.data = Path(tempfile.mkdtemp(prefix="voicebus-replicas-"))
        self.procs: list[ServiceProcess] = []
        self.channels: dict[str, aio.Channel] = {}
        self.gateway: ServiceProcess | None = None
        self.base = ""

    def env(self, role: str, orchestrator_addr: str) -> dict[str, str]:
        a = self.fakes.addresses
        return {**self.nats.env_for(role), "VOICEBUS_DATA_DIR": str(self.data), "VOICEBUS_STT_ADDR": a["stt"],
                "VOICEBUS_LLM_ADDR": a["llm"], "VOICEBUS_TTS_ADDR": a["tts"],
                "VOICEBUS_ORCHESTRATOR_ADDR": orchestrator_addr, "VOICEBUS_HEARTBEAT_SECONDS": "0.5",
                "VOICEBUS_TURN_LEASE_SECONDS": str(LEASE_SECONDS), "VOICEBUS_SHUTDOWN_GRACE_SECONDS": "20",
                "VOICEBUS_METRICS_PORT_OFFSET": "0", "VOICEBUS_TRACE_VIEW": "false"}

    async def orchestrator(self, name: str) -> ServiceProcess:
        address = f"127.0.0.1:{free_port()}"
        proc = ServiceProcess("orchestrator", address, self.env("orchestrator", address), name=f"replica-{name}")
        self.procs.append(proc)
        await asyncio.to_thread(proc.wait_healthy, 60)
        return proc

    async def start_gateway(self, configured: ServiceProcess) -> None:
        """A gateway configured with `configured` only: the others it learns from heartbeats."""
        self.gateway, self.base = await asyncio.to_thread(
            start_gateway, self.env("gateway", configured.address), "replica-gateway")

    def stub(self, proc: ServiceProcess) -> assistant_pb2_grpc.AssistantStub:
        if proc.address not in self.channels:
            self.channels[proc.address] = aio.insecure_channel(proc.address)
        return assistant_pb2_grpc.AssistantStub(self.channels[proc.address])

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        for proc in ([self.gateway] if self.gateway else []) + self.procs:
            await asyncio.to_thread(proc.stop, signal.SIGKILL)


@pytest.fixture
async def replicas(nats):
    async with FakeServices(llm=held_llm()) as fakes:
        stack = Replicas(nats, fakes)
        try:
            yield stack
        finally:
            stack.fakes.llm.release()
            await stack.close()


def text_turn(words: str, conversation_id: str = "") -> assistant_pb2.ProcessTurnRequest:
    return assistant_pb2.ProcessTurnRequest(conversation_id=conversation_id, text=words,
                                            options=assistant_pb2.TurnOptions(synthesize_audio=False))


async def new_conversation(stub: assistant_pb2_grpc.AssistantStub) -> str:
    reply = await stub.ProcessTurn(text_turn("What is the capital of France?"), timeout=30)
    assert reply.turn.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
    return reply.turn.conversation_id


async def code_of(call: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, await call
    except aio.AioRpcError as exc:
        return exc.code(), exc.details()


async def until(condition: Any, what: str, timeout: float = 20.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(every)


def served(proc: ServiceProcess, conversation_id: str) -> bool:
    """The process logged a finished turn of that conversation."""
    for line in proc.logs().splitlines():
        if conversation_id in line and '"turn finished"' in line:
            return True
    return False


async def test_one_turn_per_conversation_across_replicas(replicas: Replicas) -> None:
    a, b = await replicas.orchestrator("a"), await replicas.orchestrator("b")
    cid = await new_conversation(replicas.stub(a))
    both = [asyncio.create_task(code_of(replicas.stub(p).ProcessTurn(text_turn("Tell me more.", cid), timeout=30)))
            for p in (a, b)]
    done, _ = await asyncio.wait(both, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1, "neither turn was refused while the other runs (its answer is held)"
    code, details = done.pop().result()
    assert (code, details) == (grpc.StatusCode.ABORTED, "another turn is running in this conversation")
    replicas.fakes.llm.release()
    results = await asyncio.gather(*both)
    assert sorted(c.name for c, _ in results) == ["ABORTED", "OK"]
    reply = next(r for c, r in results if c == grpc.StatusCode.OK)
    assert reply.turn.assistant_text == HELD_ANSWER
    assert len(replicas.fakes.llm.calls) == 2  # the refused turn never reached the LLM
    stored = await replicas.stub(b).GetConversation(assistant_pb2.GetConversationRequest(conversation_id=cid))
    assert [t.assistant_text for t in stored.conversation.turns] == [FIRST_ANSWER, HELD_ANSWER]


async def test_a_killed_holder_blocks_its_conversation_at_most_the_lease(replicas: Replicas) -> None:
    a, b = await replicas.orchestrator("a"), await replicas.orchestrator("b")
    cid = await new_conversation(replicas.stub(a))
    running = asyncio.create_task(code_of(replicas.stub(a).ProcessTurn(text_turn("Tell me more.", cid), timeout=30)))
    await replicas.fakes.llm.wait_calls(2, ended=False)  # A's turn is under way, its answer held
    a.proc.kill()
    killed_at = time.monotonic()
    assert (await running)[0] == grpc.StatusCode.UNAVAILABLE
    replicas.fakes.llm.release()
    refused = 0
    while True:
        code, reply = await code_of(replicas.stub(b).ProcessTurn(text_turn("Are you there?", cid), timeout=30))
        if code != grpc.StatusCode.ABORTED:
            break
        refused += 1
        assert time.monotonic() - killed_at < LEASE_SECONDS + 3, "the dead holder's lease did not expire"
        await asyncio.sleep(0.1)
    waited = time.monotonic() - killed_at
    assert code == grpc.StatusCode.OK and reply.turn.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
    assert refused > 0, "B never saw A's lease: the conversation was not guarded across replicas"
    assert waited < LEASE_SECONDS + 2, waited


async def test_the_gateway_spreads_new_conversations_over_the_orchestrators(replicas: Replicas) -> None:
    replicas.fakes.llm.release()
    a, b = await replicas.orchestrator("a"), await replicas.orchestrator("b")
    await replicas.start_gateway(configured=a)  # B is known only from its heartbeats

    async with httpx.AsyncClient(base_url=replicas.base, timeout=30) as http:
        async def chat() -> str:
            reply = await http.post("/api/chat", json={"text": "Hello?", "synthesize_audio": False})
            assert reply.status_code == 200, reply.text
            return reply.json()["conversation_id"]

        first: list[str] = []

        async def b_known() -> bool:
            first.append(await chat())
            return served(b, first[-1])
        deadline = time.monotonic() + 20
        while not await b_known():  # until B's heartbeat reached the gateway
            assert time.monotonic() < deadline, "the gateway never sent a conversation to B"
        spread = [await chat() for _ in range(4)]
    where = ["a" if served(a, c) else "b" if served(b, c) else "?" for c in spread]
    assert sorted(where) == ["a", "a", "b", "b"], where


async def ws_events(ws: Any, until_type: str, timeout: float = 20) -> list[dict[str, Any]]:
    """JSON events up to and including the first of `until_type` (binary audio frames skipped)."""
    events: list[dict[str, Any]] = []

    async def read() -> None:
        async for message in ws:
            if isinstance(message, bytes):
                continue
            events.append(json.loads(message))
            if events[-1]["type"] == until_type:
                return
    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {until_type!r} within {timeout:g} s: {[e['type'] for e in events]}") from None
    return events


async def test_a_websocket_moves_when_its_orchestrator_dies(replicas: Replicas) -> None:
    replicas.fakes.llm.release()
    a, b = await replicas.orchestrator("a"), await replicas.orchestrator("b")
    await replicas.start_gateway(configured=a)
    assert replicas.gateway is not None  # it must know B before A dies: else A is all it knows
    await until(lambda: any("instance joined" in line and b.address in line
                            for line in replicas.gateway.logs().splitlines()), "the gateway heard B's heartbeat")
    async with connect(replicas.base.replace("http://", "ws://") + "/ws", open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "start", "synthesize_audio": False}))
        opened = (await ws_events(ws, "conversation_opened"))[-1]
        cid = opened["conversation_id"]
        await ws.send(json.dumps({"type": "text", "text": "What is the capital of France?"}))
        first = (await ws_events(ws, "turn_completed"))[-1]
        assert first["turn"]["assistant_text"] == FIRST_ANSWER
        holder, other = (a, b) if served(a, cid) else (b, a)
        assert served(holder, cid) and not served(other, cid)

        holder.proc.kill()
        events = await ws_events(ws, "reconnected")
        assert [e["type"] for e in events] == ["reconnected"], events  # one event, nothing fatal before it
        moved = events[0]
        assert moved["conversation_id"] == cid and moved["turn_count"] == 1 and moved["created"] is False
        assert "lost_turn_id" not in moved and moved["message"]

        await ws.send(json.dumps({"type": "text", "text": "And of Italy?"}))
        second = (await ws_events(ws, "turn_completed"))[-1]
    assert second["conversation_id"] == cid
    assert served(other, cid)
    history = [m.content for m in replicas.fakes.llm.requests[-1].messages]
    assert "What is the capital of France?" in history and FIRST_ANSWER.strip() in history
    async with httpx.AsyncClient(base_url=replicas.base, timeout=30) as http:
        stored = (await http.get(f"/api/conversations/{cid}")).json()
    assert [t["user_text"] for t in stored["turns"]] == ["What is the capital of France?", "And of Italy?"]


async def test_sigterm_drains_the_orchestrator(replicas: Replicas) -> None:
    a, b = await replicas.orchestrator("a"), await replicas.orchestrator("b")
    await replicas.start_gateway(configured=a)
    assert replicas.gateway is not None
    await until(lambda: any("instance joined" in line and b.address in line
                            for line in replicas.gateway.logs().splitlines()), "the gateway heard B's heartbeat")
    cid = await new_conversation(replicas.stub(a))
    running = asyncio.create_task(code_of(replicas.stub(a).ProcessTurn(text_turn("Tell me more.", cid), timeout=60)))
    await replicas.fakes.llm.wait_calls(2, ended=False)

    a.proc.send_signal(signal.SIGTERM)
    unknown = text_turn("Hello?", conversation_id=uuid.uuid4().hex)
    deadline = time.monotonic() + 10
    while (result := await code_of(replicas.stub(a).ProcessTurn(unknown, timeout=5)))[0] == grpc.StatusCode.NOT_FOUND:
        assert time.monotonic() < deadline, "A never began to drain"
        await asyncio.sleep(0.05)
    assert result[0] == grpc.StatusCode.UNAVAILABLE and "draining" in result[1], result

    async def one_config() -> AsyncIterator[assistant_pb2.ConverseRequest]:
        yield assistant_pb2.ConverseRequest(config=assistant_pb2.ConverseConfig(
            input_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=16000)))
    code, details = await code_of(replicas.stub(a).Converse(one_config(), timeout=5).read())
    assert code == grpc.StatusCode.UNAVAILABLE and "draining" in details

    replicas.fakes.llm.release()  # while A drains, the gateway takes new conversations to B
    async with httpx.AsyncClient(base_url=replicas.base, timeout=30) as http:
        reply = await http.post("/api/chat", json={"text": "Anyone there?", "synthesize_audio": False})
    assert reply.status_code == 200, reply.text
    assert served(b, reply.json()["conversation_id"])

    code, finished = await asyncio.wait_for(running, 30)
    assert code == grpc.StatusCode.OK and finished.turn.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
    assert finished.turn.assistant_text == HELD_ANSWER
    assert await asyncio.to_thread(a.proc.wait, 30) == 0
