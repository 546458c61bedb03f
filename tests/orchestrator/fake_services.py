"""Scripted STT, LLM and TTS gRPC servers for the orchestrator's fast tests.

Each fake is a servicer of the real contract (proto/voicebus/v1), served by grpc.aio in the
test's own event loop on a real free port, with grpc.health.v1 SERVING, so the
orchestrator dials them exactly as it dials the real services:

    async with FakeServices(stt=FakeSTT([Utterance(0.3, 1.5, "what is the capital of france")]),
                            llm=FakeLLM([Reply.text("Paris is the capital.")])) as fakes:
        fakes.addresses          # {"stt": "127.0.0.1:PORT", "llm": ..., "tts": ...}
        fakes.llm.requests       # what the LLM was asked
        await fakes.stop("tts")  # an outage; later: await fakes.restart("tts") on the same port

A stage left out gets a default fake; `tts=None` serves no TTS at all; more keyword
arguments serve more instances (`stt_backup=FakeSTT(...)`) for failover tests. The fakes
record everything they receive; wait for a recorded thing with `fake.wait_until(...)`
rather than sleeping, and use `hold_after`/`hold_after_sentences` plus `release()`
where a test needs an answer to be still running.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fake_common import CallRecord, FakeBase
from fake_llm import FakeLLM, LlmCall, Reply
from fake_stt import FakeSTT, SttStream, Utterance
from fake_tts import FakeTTS, TtsCall, pcm16_tone
from voicebus.v1 import llm_pb2, llm_pb2_grpc, stt_pb2, stt_pb2_grpc, tts_pb2, tts_pb2_grpc

__all__ = ["CallRecord", "FakeLLM", "FakeSTT", "FakeServer", "FakeServices", "FakeTTS", "LlmCall", "Reply",
           "SttStream", "TtsCall", "Utterance", "pcm16_audio", "pcm16_tone"]

_REGISTER: dict[type, tuple[Callable[[Any, aio.Server], None], str]] = {
    FakeSTT: (stt_pb2_grpc.add_SpeechToTextServicer_to_server,
              stt_pb2.DESCRIPTOR.services_by_name["SpeechToText"].full_name),
    FakeLLM: (llm_pb2_grpc.add_LanguageModelServicer_to_server,
              llm_pb2.DESCRIPTOR.services_by_name["LanguageModel"].full_name),
    FakeTTS: (tts_pb2_grpc.add_TextToSpeechServicer_to_server,
              tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name),
}
# As voicebus.grpc_server: no port sharing (two servers on one port would split calls between
# them), and the orchestrator's 10 s keepalive pings are accepted rather than answered by GOAWAY.
_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000), ("grpc.http2.max_ping_strikes", 0)]


def pcm16_audio(seconds: float, rate: int = 16000) -> bytes:
    """Silent PCM16 of a given length: what moves a FakeSTT stream's timeline on."""
    return bytes(2 * round(seconds * rate))


class FakeServer:
    """One fake on one port. The fake (and what it recorded) outlives stop() and restart()."""

    def __init__(self, fake: FakeBase, host: str = "127.0.0.1") -> None:
        kind = next((k for k in _REGISTER if isinstance(fake, k)), None)
        if kind is None:
            raise TypeError(f"not a fake service: {fake!r}")
        self.fake, self.host = fake, host
        self._register, self.service_name = _REGISTER[kind]
        self.port = 0  # chosen by the system at the first start, kept for restarts
        self._server: aio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> FakeServer:
        if self._server is not None:
            return self
        server = aio.server(options=_OPTIONS)
        self._register(self.fake, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        # Port 0 at first: the system picks a free port, so no other test can race us for it.
        port = server.add_insecure_port(f"{self.host}:{self.port}")
        if port == 0:
            raise RuntimeError(f"cannot listen on {self.host}:{self.port}")
        await server.start()
        for service in ("", self.service_name):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.port, self._server, self.fake.stopping = port, server, False
        return self

    async def stop(self, grace: float | None = None) -> None:
        """Close the port. Calls in flight end at once (recorded as "stopped") unless `grace`."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self.fake.stopping = True
        await server.stop(grace)

    async def restart(self) -> FakeServer:
        """Serve again on the same port, after stop() (or from running: stop, then start).
        A client's channel comes back after its own reconnect backoff (gRPC: about 1 s after a
        refused connection, shared by every channel to the address): wait, don't sleep."""
        await self.stop()
        return await self.start()


_DEFAULT: Any = object()


class FakeServices:
    """Starts fakes on free ports: stt, llm and tts (defaults unless given; None = not served),
    plus any named extra fakes. `fakes.<name>` is the fake, `fakes.servers[name]` its server."""

    def __init__(self, stt: FakeSTT | None = _DEFAULT, llm: FakeLLM | None = _DEFAULT,
                 tts: FakeTTS | None = _DEFAULT, **more: FakeBase) -> None:
        chosen = {"stt": FakeSTT() if stt is _DEFAULT else stt, "llm": FakeLLM() if llm is _DEFAULT else llm,
                  "tts": FakeTTS() if tts is _DEFAULT else tts, **more}
        self.servers = {name: FakeServer(fake) for name, fake in chosen.items() if fake is not None}

    def __getattr__(self, name: str) -> Any:
        servers = self.__dict__.get("servers", {})
        if name in servers:
            return servers[name].fake
        raise AttributeError(f"no fake service named {name!r} (serving: {', '.join(servers)})")

    @property
    def addresses(self) -> dict[str, str]:
        return {name: server.address for name, server in self.servers.items()}

    async def start(self) -> FakeServices:
        for server in self.servers.values():
            await server.start()
        return self

    async def stop(self, name: str | None = None) -> None:
        """Stop one service, or all of them."""
        for server in [self.servers[name]] if name else self.servers.values():
            await server.stop()

    async def restart(self, name: str) -> None:
        await self.servers[name].restart()

    async def __aenter__(self) -> FakeServices:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
