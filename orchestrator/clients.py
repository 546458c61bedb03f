"""Calls to the STT, LLM and TTS services, with failover between instances.

A call that fails with a retryable status (UNAVAILABLE, DEADLINE_EXCEEDED, a broken
stream) is tried again on the next instance the registry knows, before the user notices:
streams keep what they sent so far and replay it to the new instance.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from opentelemetry import trace

from orchestrator.registry import ServiceRegistry
from voicebus.metrics import FALLBACKS
from voicebus.v1 import llm_pb2, llm_pb2_grpc, stt_pb2, stt_pb2_grpc, tts_pb2, tts_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL}


class StageError(Exception):
    """A stage failed for good; `code` is the gRPC status to report, `message` says why."""

    def __init__(self, service: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service, self.code, self.message = service, code, message

    @property
    def is_input_error(self) -> bool:
        return self.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                             grpc.StatusCode.OUT_OF_RANGE)


def _describe(exc: aio.AioRpcError) -> str:
    return f"{exc.code().name}: {(exc.details() or '').strip()[:300]}"


def _fail_over(registry: ServiceRegistry, service: str, address: str, exc: aio.AioRpcError) -> None:
    """An instance failed a call: avoid it for a while and try the next one (counted, and an
    event on the current span so that the turn's trace says why it took longer)."""
    registry.mark_failed(service, address)
    FALLBACKS.labels(stage=service, kind="instance").inc()
    trace.get_current_span().add_event("failover", {"service": service, "address": address,
                                                    "error": _describe(exc)})


async def call_unary(registry: ServiceRegistry, service: str, call: Callable[[aio.Channel], Awaitable[T]]) -> T:
    """`call` on the first instance that answers; input errors are not retried."""
    errors: list[str] = []
    for address in registry.candidates(service):
        try:
            result = await call(registry.channel(address))
        except aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE or exc.code() == grpc.StatusCode.CANCELLED:
                raise StageError(service, exc.code(), exc.details() or exc.code().name) from None
            _fail_over(registry, service, address, exc)
            errors.append(f"{address} {_describe(exc)}")
            continue
        registry.mark_ok(service, address)
        return result
    raise StageError(service, grpc.StatusCode.UNAVAILABLE, "no instance answered: " + "; ".join(errors))


class ReplayableStream:
    """A bidirectional stream whose requests are kept, so that a broken call can be replayed
    on another instance. `resumable(received)` says whether failover is still allowed after
    `received` responses (e.g. TTS: only before the first audio)."""

    def __init__(self, registry: ServiceRegistry, service: str,
                 open_call: Callable[[aio.Channel, AsyncIterator[Any]], Any], first: Any,
                 resumable: Callable[[int], bool], skip: Callable[[Any, int], bool] | None = None) -> None:
        self.registry, self.service = registry, service
        self._open_call, self._first = open_call, first
        self._resumable, self._skip = resumable, skip
        self._items: list[Any] = []
        self._closed = False
        self._more = asyncio.Event()
        self._call: Any = None
        self.address = ""

    def send(self, request: Any) -> None:
        self._items.append(request)
        self._more.set()

    def close(self) -> None:
        """Half-close: no more requests."""
        self._closed = True
        self._more.set()

    async def _requests(self) -> AsyncIterator[Any]:
        yield self._first
        i = 0
        while True:
            while i < len(self._items):
                yield self._items[i]
                i += 1
            if self._closed:
                return
            self._more.clear()
            if i == len(self._items) and not self._closed:
                await self._more.wait()

    async def responses(self) -> AsyncIterator[Any]:
        received = 0
        errors: list[str] = []
        for address in self.registry.candidates(self.service):
            self.address = address
            self._call = self._open_call(self.registry.channel(address), self._requests())
            seen_here = 0
            try:
                async for response in self._call:
                    seen_here += 1
                    if self._skip and self._skip(response, received):
                        continue
                    received += 1
                    yield response
                self.registry.mark_ok(self.service, address)
                return
            except aio.AioRpcError as exc:
                retry = exc.code() in RETRYABLE and exc.code() != grpc.StatusCode.CANCELLED
                if not retry or not self._resumable(received):
                    raise StageError(self.service, exc.code(), exc.details() or exc.code().name) from None
                _fail_over(self.registry, self.service, address, exc)
                errors.append(f"{address} {_describe(exc)}")
                log.warning("stream broke; replaying on another instance",
                            extra={"fields": {"service": self.service, "address": address, "after": seen_here}})
            finally:
                if self._call is not None and not self._call.done():
                    self._call.cancel()
        raise StageError(self.service, grpc.StatusCode.UNAVAILABLE, "no instance answered: " + "; ".join(errors))

    def cancel(self) -> None:
        self._closed = True
        self._more.set()
        if self._call is not None:
            self._call.cancel()


def stt_stream(registry: ServiceRegistry, config: stt_pb2.RecognitionConfig, request_id: str) -> ReplayableStream:
    """StreamingTranscribe; after a failover, finals already delivered are not delivered again."""
    delivered_finals = 0

    def skip(response: stt_pb2.StreamingTranscribeResponse, _received: int) -> bool:
        nonlocal delivered_finals
        if response.WhichOneof("response") == "result" and response.result.utterance_index < delivered_finals:
            return True
        if response.WhichOneof("response") == "result" and response.result.is_final:
            delivered_finals = response.result.utterance_index + 1
        return False

    return ReplayableStream(
        registry, "stt",
        lambda channel, requests: stt_pb2_grpc.SpeechToTextStub(channel).StreamingTranscribe(requests),
        stt_pb2.StreamingTranscribeRequest(config=config, request_id=request_id),
        resumable=lambda _received: True, skip=skip)


def tts_stream(registry: ServiceRegistry, config: tts_pb2.SynthesisConfig, request_id: str,
               timeout: float) -> ReplayableStream:
    """StreamingSynthesize; failover only before the first audio (never splice two voices)."""
    return ReplayableStream(
        registry, "tts",
        lambda channel, requests: tts_pb2_grpc.TextToSpeechStub(channel).StreamingSynthesize(requests,
                                                                                            timeout=timeout),
        tts_pb2.StreamingSynthesizeRequest(config=config, request_id=request_id),
        resumable=lambda received: received == 0)


async def llm_generate(registry: ServiceRegistry, request: llm_pb2.GenerateRequest,
                       timeout: float) -> AsyncIterator[llm_pb2.GenerateResponse]:
    """Generate; failover between LLM instances only before the first delta."""
    errors: list[str] = []
    for address in registry.candidates("llm"):
        call = llm_pb2_grpc.LanguageModelStub(registry.channel(address)).Generate(request, timeout=timeout)
        received = 0
        try:
            async for response in call:
                received += 1
                yield response
            registry.mark_ok("llm", address)
            return
        except aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE or exc.code() == grpc.StatusCode.CANCELLED or received:
                raise StageError("llm", exc.code(), exc.details() or exc.code().name) from None
            _fail_over(registry, "llm", address, exc)
            errors.append(f"{address} {_describe(exc)}")
        finally:
            if not call.done():
                call.cancel()
    raise StageError("llm", grpc.StatusCode.UNAVAILABLE, "no instance answered: " + "; ".join(errors))


async def stt_transcribe(registry: ServiceRegistry, request: stt_pb2.TranscribeRequest,
                         timeout: float) -> stt_pb2.TranscribeResponse:
    return await call_unary(registry, "stt",
                            lambda ch: stt_pb2_grpc.SpeechToTextStub(ch).Transcribe(request, timeout=timeout))
