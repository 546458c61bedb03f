"""The real orchestrator in this process, on a real port, calling scripted fake services.

    async with Orchestra(FakeServices(...), nats) as o:
        events = await o.converse(config, [text("hi")])   # every event of the stream
        o.kinds(events)                                   # ["conversation_opened", "turn_started", ...]
        await o.stored(conversation_id)                   # the rows, as GetConversation returns them

SQLite in a temporary folder, NATS real (tests/helpers.NatsServer); no model is loaded.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
import nats
from grpc import aio

from fake_services import FakeServices, pcm16_audio
from helpers import free_port
from orchestrator.conversations import Conversations
from orchestrator.events import TurnEvents
from orchestrator.recorder import Deps
from voicebus.registry import ServiceRegistry
from orchestrator.server import AssistantServicer
from orchestrator.settings import OrchestratorSettings
from orchestrator.store import open_store
from voicebus.bus import EventBus
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc, audio_pb2, events_pb2

Request = assistant_pb2.ConverseRequest


def text(words: str) -> Request:
    return Request(text=words)


def audio(data: bytes) -> Request:
    return Request(audio=data)


def speech(seconds: float, chunk: float = 0.02) -> list[Request]:
    """`seconds` of PCM16 at 16 kHz in 20 ms frames, as a microphone sends them (no real-time pacing:
    the fake STT keeps time by the audio it received)."""
    data = pcm16_audio(seconds)
    step = int(16000 * 2 * chunk)
    return [audio(data[i:i + step]) for i in range(0, len(data), step)]


def end_of_audio() -> Request:
    return Request(end_of_audio=assistant_pb2.EndOfAudio())


def interrupt() -> Request:
    return Request(interrupt=assistant_pb2.Interrupt())


def playback(turn_id: str, played_ms: int) -> Request:
    return Request(playback=assistant_pb2.PlaybackReport(turn_id=turn_id, played_ms=played_ms))


def config(conversation_id: str = "", speak: bool = True, rate: int = 16000,
           encoding: int = audio_pb2.AUDIO_ENCODING_PCM16, realtime: bool = False, **options: Any) -> Request:
    return Request(config=assistant_pb2.ConverseConfig(
        conversation_id=conversation_id, interim_results=True, realtime_playback=realtime,
        input_format=audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate),
        options=assistant_pb2.TurnOptions(synthesize_audio=speak, **options)))


def kinds(events: Iterable[assistant_pb2.ConverseResponse]) -> list[str]:
    """Event kinds in order, runs of the same streamed kind (deltas, audio, interims) folded into one."""
    out: list[str] = []
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "transcript":
            kind = "transcript_final" if event.transcript.is_final else "transcript_interim"
        if kind in ("response_delta", "audio", "transcript_interim") and out and out[-1] == kind:
            continue
        out.append(kind)
    return out


class Orchestra:
    def __init__(self, fakes: FakeServices, nats_url: str, **settings: Any) -> None:
        self.fakes, self.nats_url = fakes, nats_url
        self.folder = Path(tempfile.mkdtemp(prefix="voicebus-orchestra-"))
        self.extra = settings
        self.address = ""
        self.events: list[events_pb2.TurnEvent] = []  # every NATS turn event, in order of arrival

    async def __aenter__(self) -> Orchestra:
        await self.fakes.start()
        addresses = self.fakes.addresses
        self.address = f"127.0.0.1:{free_port()}"
        self.settings = OrchestratorSettings(
            data_dir=self.folder, nats_url=self.nats_url, stt_addr=addresses.get("stt", "127.0.0.1:9"),
            llm_addr=addresses.get("llm", "127.0.0.1:9"), tts_addr=addresses.get("tts", "127.0.0.1:9"),
            orchestrator_addr=self.address, trace_view=False, **self.extra)
        self.store = await open_store(self.settings.store_url())
        self.bus = EventBus(self.nats_url, name="orchestra")
        events = TurnEvents(self.bus)
        await self.bus.start()
        await self.bus.wait_connected(10)
        self.nc = await nats.connect(self.nats_url)
        self._sub = await self.nc.subscribe("voicebus.turn.>", cb=self._on_event)
        self.registry = ServiceRegistry(self.settings, self.settings.instance_retry_seconds)
        self.deps = Deps(settings=self.settings, store=self.store, registry=self.registry, events=events,
                         conversations=Conversations())
        self.server = aio.server()
        assistant_pb2_grpc.add_AssistantServicer_to_server(AssistantServicer(self.deps), self.server)
        self.server.add_insecure_port(self.address)
        await self.server.start()
        self.channel = aio.insecure_channel(self.address)
        self.stub = assistant_pb2_grpc.AssistantStub(self.channel)
        return self

    async def _on_event(self, msg: Any) -> None:
        event = events_pb2.TurnEvent()
        event.ParseFromString(msg.data)
        self.events.append(event)

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop(0)
        await self.nc.close()
        await self.bus.close()
        await self.registry.close()
        await self.store.close()
        await self.fakes.stop()

    # -- talking to it -------------------------------------------------------------------------
    async def converse(self, *requests: Request | float, timeout: float = 30) -> list[assistant_pb2.ConverseResponse]:
        """Send `requests` (a float = pause that long), half-close, and return every event."""
        async def stream() -> AsyncIterator[Request]:
            for item in requests:
                if isinstance(item, (int, float)):
                    await asyncio.sleep(item)
                else:
                    yield item
        return [event async for event in self.stub.Converse(stream(), timeout=timeout)]

    def add_instance(self, service: str, fake_name: str, load: float = 0.5) -> None:
        """Another instance of `service` (the fake served as `fake_name`), tried after the configured
        one (higher load), and never expiring, like a configured address."""
        from voicebus.registry import Instance

        address = self.fakes.addresses[fake_name]
        self.registry.instances[service][address] = Instance(address, load=load)

    async def stored(self, conversation_id: str) -> assistant_pb2.Conversation:
        reply = await self.stub.GetConversation(assistant_pb2.GetConversationRequest(conversation_id=conversation_id))
        return reply.conversation

    async def nats_stages(self, turn_id: str, until: str = "", timeout: float = 10) -> list[str]:
        """The NATS stages published for one turn, in order (waits for `until` when given)."""
        from voicebus.names import label

        async def wait() -> None:
            while until not in [label(events_pb2.TurnEventType, e.type) for e in self.events if e.turn_id == turn_id]:
                await asyncio.sleep(0.02)
        if until:
            await asyncio.wait_for(wait(), timeout)
        return [label(events_pb2.TurnEventType, e.type) for e in self.events if e.turn_id == turn_id]

    async def expect_status(self, call: Any, code: grpc.StatusCode) -> str:
        try:
            await call
        except aio.AioRpcError as exc:
            assert exc.code() == code, (exc.code(), exc.details())
            return exc.details() or ""
        raise AssertionError(f"expected {code}, the call succeeded")


class LiveStream:
    """A Converse stream a test drives step by step: `send`, then `until("audio")` reads events."""

    def __init__(self, stub: assistant_pb2_grpc.AssistantStub, timeout: float = 30) -> None:
        self._requests: asyncio.Queue[Request | None] = asyncio.Queue()
        self.events: list[assistant_pb2.ConverseResponse] = []
        self._call = stub.Converse(self._stream(), timeout=timeout)
        self.status: grpc.StatusCode | None = None
        self.details = ""

    async def _stream(self) -> AsyncIterator[Request]:
        while (item := await self._requests.get()) is not None:
            yield item

    def send(self, *requests: Request) -> None:
        for request in requests:
            self._requests.put_nowait(request)

    async def until(self, kind: str, timeout: float = 10, turn_id: str = "") -> assistant_pb2.ConverseResponse:
        """Read events until one of `kind` (of `turn_id`, when given) arrives; returns it."""
        async def read() -> assistant_pb2.ConverseResponse:
            while True:
                event = await self._call.read()
                if event is aio.EOF:
                    raise AssertionError(f"the stream ended before {kind!r}: {kinds(self.events)}")
                self.events.append(event)
                if event.WhichOneof("event") == kind and (not turn_id or event.turn_id == turn_id):
                    return event
        try:
            return await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {kind!r} within {timeout:g} s; events so far: {kinds(self.events)}") from None

    async def finish(self, timeout: float = 10) -> list[assistant_pb2.ConverseResponse]:
        """Half-close and read the rest; the stream's status lands in `status`."""
        self._requests.put_nowait(None)
        await self._read_to_the_end(timeout)
        return self.events

    async def ended(self, timeout: float = 10) -> grpc.StatusCode:
        """Read until the server ends the stream (without half-closing)."""
        await self._read_to_the_end(timeout)
        self._requests.put_nowait(None)
        assert self.status is not None
        return self.status

    async def _read_to_the_end(self, timeout: float) -> None:
        async def rest() -> None:
            try:
                while (event := await self._call.read()) is not aio.EOF:
                    self.events.append(event)
                self.status = grpc.StatusCode.OK
            except aio.AioRpcError as exc:
                self.status, self.details = exc.code(), exc.details() or ""
        await asyncio.wait_for(rest(), timeout)


def live(o: Orchestra, *first: Request) -> LiveStream:
    stream = LiveStream(o.stub)
    stream.send(*first)
    return stream
