"""Calls to the STT, LLM and TTS services, with failover between instances.

One helper, `with_failover`, serves every kind of call: a unary call, an LLM or TTS stream
that may move to another instance only before its first output, and an STT stream that
replays what it sent so far. A retryable failure (UNAVAILABLE, DEADLINE_EXCEEDED, a broken
stream, a busy instance) is tried on the next instance the registry knows before the user
notices; each move is noted on the turn (`fallbacks`), counted and put on the trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio
from opentelemetry import trace

from voicebus.registry import ServiceRegistry
from voicebus.metrics import FALLBACKS
from voicebus.v1 import llm_pb2, llm_pb2_grpc, stt_pb2, stt_pb2_grpc, tts_pb2, tts_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

# Worth another instance. CANCELLED is not: it is our own barge-in or the client leaving.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL})
INPUT_ERRORS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                          grpc.StatusCode.OUT_OF_RANGE})
Note = Callable[[str], None]


class StageError(Exception):
    """A stage failed for good; `code` is the gRPC status to report, `message` says why."""

    def __init__(self, service: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service, self.code, self.message = service, code, message

    @property
    def is_input_error(self) -> bool:
        return self.code in INPUT_ERRORS


def _describe(exc: aio.AioRpcError) -> str:
    return f"{exc.code().name}: {(exc.details() or '').strip()[:300]}"


def _exhausted(service: str, codes: list[grpc.StatusCode], errors: list[str]) -> StageError:
    """Every instance failed: busy everywhere is RESOURCE_EXHAUSTED (retry later), else UNAVAILABLE."""
    if codes and all(c == grpc.StatusCode.RESOURCE_EXHAUSTED for c in codes):
        return StageError(service, grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "every instance is busy; try again in a moment (" + "; ".join(errors) + ")")
    return StageError(service, grpc.StatusCode.UNAVAILABLE, "no instance answered: " + "; ".join(errors))


async def with_failover(registry: ServiceRegistry, service: str,
                        attempt: Callable[[aio.Channel], AsyncIterator[T]],
                        resumable: Callable[[], bool] = lambda: True, note: Note | None = None) -> AsyncIterator[T]:
    """What `attempt(channel)` yields, from the first instance that answers.

    After a retryable failure the next instance is tried if `resumable()` still allows it (a
    stream that already produced output the user saw may not); `note` hears of each move."""
    errors: list[str] = []
    codes: list[grpc.StatusCode] = []
    for address in registry.candidates(service):
        answered = False
        try:
            async for item in attempt(registry.channel(address)):
                if not answered:
                    answered = True
                    registry.mark_ok(service, address)
                yield item
            registry.mark_ok(service, address)
            return
        except aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE or not resumable():
                raise StageError(service, exc.code(), exc.details() or exc.code().name) from None
            registry.mark_failed(service, address)
            FALLBACKS.labels(stage=service, kind="instance").inc()
            trace.get_current_span().add_event("failover", {"service": service, "address": address,
                                                            "error": _describe(exc)})
            errors.append(f"{address} {_describe(exc)}")
            codes.append(exc.code())
            if note:
                note(f"{service}: instance {address} failed ({exc.code().name}), tried the next one")
    raise _exhausted(service, codes, errors)


async def _unary(awaitable: Awaitable[T]) -> AsyncIterator[T]:
    yield await awaitable


async def call_unary(registry: ServiceRegistry, service: str, call: Callable[[aio.Channel], Awaitable[T]],
                     note: Note | None = None) -> T:
    """`call` on the first instance that answers; input errors are not retried."""
    async for result in with_failover(registry, service, lambda channel: _unary(call(channel)), note=note):
        return result
    raise StageError(service, grpc.StatusCode.INTERNAL, "no result")  # unreachable: a unary call yields once


class ReplayableStream:
    """A bidirectional stream whose requests are kept, so that a broken call can be replayed
    on another instance. `resumable()` says whether that is still allowed (TTS: only before
    its first audio). `new_attempt()` returns the filter for one attempt's responses (None
    drops one): a replay repeats what the first instance already said."""

    def __init__(self, registry: ServiceRegistry, service: str,
                 open_call: Callable[[aio.Channel, AsyncIterator[Any]], Any], first: Any,
                 resumable: Callable[[], bool] = lambda: True,
                 new_attempt: Callable[[], Callable[[Any], Any]] | None = None, note: Note | None = None) -> None:
        self.registry, self.service, self.note = registry, service, note
        self._open_call, self._first = open_call, first
        self._resumable = resumable
        self._new_attempt = new_attempt or (lambda: lambda response: response)
        self.items: list[Any] = []  # requests kept for a replay; the owner may drop a prefix
        self._base = 0  # requests dropped from the front of `items`
        self.closed = False
        self._more = asyncio.Event()
        self._call: Any = None
        self.received = 0

    def send(self, request: Any) -> None:
        self.items.append(request)
        self._more.set()

    def close(self) -> None:
        """Half-close: no more requests."""
        self.closed = True
        self._more.set()

    def drop_items(self, count: int) -> None:
        """Forget the first `count` kept requests: a replay starts after them."""
        count = min(count, len(self.items))
        del self.items[:count]
        self._base += count

    async def _requests(self) -> AsyncIterator[Any]:
        yield self._first
        position = self._base  # absolute index (since the stream began) of the next request
        while True:
            position = max(position, self._base)
            while position < self._base + len(self.items):
                yield self.items[position - self._base]
                position += 1
            if self.closed:
                return
            self._more.clear()
            await self._more.wait()

    async def _attempt(self, channel: aio.Channel) -> AsyncIterator[Any]:
        keep = self._new_attempt()
        self._call = self._open_call(channel, self._requests())
        try:
            async for response in self._call:
                if (kept := keep(response)) is not None:
                    self.received += 1
                    yield kept
        finally:
            if not self._call.done():
                self._call.cancel()

    def responses(self) -> AsyncIterator[Any]:
        return with_failover(self.registry, self.service, self._attempt, self._resumable, self.note)

    def cancel(self) -> None:
        self.closed = True
        self._more.set()
        if self._call is not None:
            self._call.cancel()


def stt_stream(registry: ServiceRegistry, config: stt_pb2.RecognitionConfig, request_id: str,
               new_attempt: Callable[[], Callable[[Any], Any]], note: Note | None = None) -> ReplayableStream:
    """StreamingTranscribe; it may always move to another instance (the audio is replayed)."""
    return ReplayableStream(
        registry, "stt",
        lambda channel, requests: stt_pb2_grpc.SpeechToTextStub(channel).StreamingTranscribe(requests),
        stt_pb2.StreamingTranscribeRequest(config=config, request_id=request_id), new_attempt=new_attempt,
        note=note)


def tts_stream(registry: ServiceRegistry, config: tts_pb2.SynthesisConfig, request_id: str,
               timeout: float, note: Note | None = None) -> ReplayableStream:
    """StreamingSynthesize; failover only before the first audio (never splice two voices)."""
    stream: ReplayableStream = ReplayableStream(
        registry, "tts",
        lambda channel, requests: tts_pb2_grpc.TextToSpeechStub(channel).StreamingSynthesize(requests,
                                                                                            timeout=timeout),
        tts_pb2.StreamingSynthesizeRequest(config=config, request_id=request_id),
        resumable=lambda: stream.received == 0, note=note)
    return stream


def llm_generate(registry: ServiceRegistry, request: llm_pb2.GenerateRequest, timeout: float,
                 note: Note | None = None) -> AsyncIterator[llm_pb2.GenerateResponse]:
    """Generate; failover between LLM instances only before the first response."""
    received = 0

    async def attempt(channel: aio.Channel) -> AsyncIterator[llm_pb2.GenerateResponse]:
        nonlocal received
        call = llm_pb2_grpc.LanguageModelStub(channel).Generate(request, timeout=timeout)
        try:
            async for response in call:
                received += 1
                yield response
        finally:
            if not call.done():
                call.cancel()

    return with_failover(registry, "llm", attempt, resumable=lambda: received == 0, note=note)


async def stt_transcribe(registry: ServiceRegistry, request: stt_pb2.TranscribeRequest,
                         timeout: float, note: Note | None = None) -> stt_pb2.TranscribeResponse:
    return await call_unary(registry, "stt",
                            lambda ch: stt_pb2_grpc.SpeechToTextStub(ch).Transcribe(request, timeout=timeout),
                            note=note)
