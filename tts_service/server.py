"""The TextToSpeech gRPC adapter: requests in, sentences' audio out, errors as status codes.

Both synthesis calls share one pipeline (`_speak`): sentences in text order → the plan's
engine, one sentence at a time (so audio order is text order) → the response's encoder
→ one message per sentence, sent as soon as it exists. In StreamingSynthesize a separate
task reads the client's text, so receiving never waits on synthesis. A call holds one of
the service's synthesis slots only while it synthesises a sentence (tts_service.capacity):
a stream waiting for the LLM's text holds none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable

import grpc
from grpc import aio

from tts_service.capacity import Busy, SynthesisSlots
from tts_service.encoding import ResponseEncoder
from tts_service.engines import EngineError
from tts_service.settings import TtsSettings
from tts_service.speaker import InvalidRequest, Speaker, SpeechPlan, describe_format
from voicebus.logs import request_id_var
from voicebus.metrics import FALLBACKS, QUEUE_DEPTH, TTS_FIRST_CHUNK_SECONDS, TTS_SENTENCES
from voicebus.telemetry import tracer
from voicebus.text import SentenceSplitter, split_sentences
from voicebus.v1 import audio_pb2, tts_pb2, tts_pb2_grpc

log = logging.getLogger(__name__)
_tracer = tracer(__name__)
_END = object()
_SYNTHESIS_QUEUE = QUEUE_DEPTH.labels(queue="tts_synthesis")
_WAITING = QUEUE_DEPTH.labels(queue="tts_waiting_for_slot")


class _TextFeed:
    """Complete text pieces from the reading task to the speaking pipeline. A failure
    (bad message, text over the limit) overtakes the pieces still waiting."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._error: Exception | None = None

    def put(self, index: int, piece: str) -> None:
        self._queue.put_nowait((index, piece))

    def end(self) -> None:
        self._queue.put_nowait(_END)

    def fail(self, error: Exception) -> None:
        self._error = error
        self._queue.put_nowait(_END)

    async def pieces(self) -> AsyncIterator[tuple[int, str]]:
        while True:
            item = await self._queue.get()
            if self._error is not None:
                raise self._error
            if item is _END:
                return
            yield item


class TextToSpeechServicer(tts_pb2_grpc.TextToSpeechServicer):
    def __init__(self, speaker: Speaker, settings: TtsSettings) -> None:
        self.speaker = speaker
        self.max_text_chars = settings.tts_max_text_chars
        self.slots = SynthesisSlots(settings.tts_max_concurrent_requests, settings.tts_max_waiting_sentences,
                                    settings.tts_max_wait_seconds)
        _WAITING.set_function(lambda: self.slots.waiting)

    async def _plan(self, config: tts_pb2.SynthesisConfig, context: aio.ServicerContext) -> SpeechPlan:
        try:
            return self.speaker.plan(config)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    def _too_long(self, length: int) -> str:
        return (f"the text is {length} characters long; the limit is {self.max_text_chars} "
                "(VOICEBUS_TTS_MAX_TEXT_CHARS): send it in several requests")

    async def Synthesize(self, request: tts_pb2.SynthesizeRequest,
                         context: aio.ServicerContext) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        request_id_var.set(request.request_id)
        if not request.text.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the text is empty: there is nothing to speak")
        if len(request.text) > self.max_text_chars:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, self._too_long(len(request.text)))
        plan = await self._plan(request.config, context)

        async def sentences() -> AsyncIterator[tuple[int, str]]:
            for item in enumerate(split_sentences(request.text)):
                yield item

        async for spoken in self._speak(plan, sentences(), context):
            yield tts_pb2.SynthesizeResponse(request_id=request.request_id, sentence=spoken)

    async def StreamingSynthesize(
        self, request_iterator: AsyncIterable[tts_pb2.StreamingSynthesizeRequest], context: aio.ServicerContext,
    ) -> AsyncIterator[tts_pb2.StreamingSynthesizeResponse]:
        requests = request_iterator.__aiter__()
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            first = None
        if first is None or first.WhichOneof("request") != "config":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message of StreamingSynthesize must carry the config "
                                f"(got {'nothing' if first is None else 'text'})")
        request_id = first.request_id
        request_id_var.set(request_id)
        plan = await self._plan(first.config, context)
        feed = _TextFeed()
        reader = asyncio.create_task(self._read_text(requests, feed))
        try:
            async for spoken in self._speak(plan, feed.pieces(), context):
                yield tts_pb2.StreamingSynthesizeResponse(request_id=request_id, sentence=spoken)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            reader.cancel()

    async def _read_text(self, requests: AsyncIterator[tts_pb2.StreamingSynthesizeRequest],
                         feed: _TextFeed) -> None:
        """Client text → complete pieces into the feed as soon as they are complete. The first
        piece may end at a clause, so the first audio starts early."""
        splitter = SentenceSplitter()
        index, length, spoken_text = 0, 0, False
        try:
            async for request in requests:
                if request.WhichOneof("request") == "config":
                    raise InvalidRequest("the config may only be sent once, in the first message")
                length += len(request.text)
                if length > self.max_text_chars:
                    raise InvalidRequest(self._too_long(length))
                spoken_text = spoken_text or bool(request.text.strip())
                for piece in splitter.push(request.text):
                    feed.put(index, piece)
                    index += 1
            if not spoken_text:
                raise InvalidRequest("the stream ended without any text: there is nothing to speak")
            for piece in splitter.flush():
                feed.put(index, piece)
                index += 1
            feed.end()
        except Exception as exc:  # InvalidRequest, or the client went away: the pipeline ends too
            feed.fail(exc)

    async def _speak(self, plan: SpeechPlan, sentences: AsyncIterator[tuple[int, str]],
                     context: aio.ServicerContext) -> AsyncIterator[tts_pb2.SpokenSentence]:
        encoder = ResponseEncoder(plan.encoding, plan.sample_rate)
        audio_format = describe_format(plan)
        started, first_chunk, sequence, seconds = time.monotonic(), None, 0, 0.0
        last: tts_pb2.SpokenSentence | None = None
        async for index, text in sentences:
            sentence_at = time.monotonic()  # streamed text: the time spent waiting for it is not ours
            with _tracer.start_as_current_span("tts.sentence", attributes={
                    "tts.engine": plan.current_voice.engine, "tts.voice": plan.current_voice.name,
                    "tts.sentence_index": index, "tts.chars": len(text)}) as span:
                was_fallen_back = plan.fallen_back
                _SYNTHESIS_QUEUE.inc()
                try:
                    # The slot is held for this sentence only: synthesis and encoding (both CPU).
                    await self.slots.acquire()
                    try:
                        spoken = await self.speaker.speak(plan, text)
                        if spoken.speech.samples.size:
                            data, duration = await asyncio.to_thread(encoder.encode, spoken.speech.samples,
                                                                     spoken.speech.sample_rate)
                    finally:
                        self.slots.release()
                except Busy as exc:
                    log.warning("busy", extra={"fields": {"error": str(exc)}})
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                except EngineError as exc:
                    log.error("synthesis failed", extra={"fields": {"error": str(exc)}})
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"speech synthesis failed: {exc}")
                finally:
                    _SYNTHESIS_QUEUE.dec()
                if plan.fallen_back and not was_fallen_back:
                    FALLBACKS.labels(stage="tts", kind="engine").inc()
                    span.add_event("fallback", {"from_engine": plan.voice.engine, "tts.engine": spoken.voice.engine,
                                                "tts.voice": spoken.voice.name})
                span.set_attributes({"tts.engine": spoken.voice.engine, "tts.voice": spoken.voice.name,
                                     "tts.fallback_used": spoken.fallback_used})
                if spoken.speech.samples.size == 0:
                    continue  # nothing to say (punctuation only)
                span.set_attribute("tts.audio_seconds", duration)
            last = tts_pb2.SpokenSentence(
                audio=audio_pb2.AudioChunk(data=data, format=audio_format, sequence=sequence,
                                           duration_seconds=duration),
                sentence_index=index, text=text, engine=spoken.voice.engine, voice=spoken.voice.name,
                fallback_used=spoken.fallback_used)
            if first_chunk is None:
                first_chunk = time.monotonic() - sentence_at
                TTS_FIRST_CHUNK_SECONDS.labels(spoken.voice.engine).observe(first_chunk)
            TTS_SENTENCES.labels(spoken.voice.engine, str(spoken.fallback_used).lower()).inc()
            sequence, seconds = sequence + 1, seconds + duration
            yield last
        closing = await asyncio.to_thread(encoder.finish)
        if closing and last is not None:
            # Ogg/WebM only: the container's last bytes, in a message of their own (no text).
            yield tts_pb2.SpokenSentence(
                audio=audio_pb2.AudioChunk(data=closing, format=audio_format, sequence=sequence),
                sentence_index=last.sentence_index, engine=last.engine, voice=last.voice,
                fallback_used=last.fallback_used)
        log.info("spoken", extra={"fields": {
            "chunks": sequence, "audio_seconds": round(seconds, 3), "engine": plan.current_voice.engine,
            "fallback_used": plan.fallen_back, "first_chunk_seconds": round(first_chunk or 0, 3),
            "total_seconds": round(time.monotonic() - started, 3)}})

    async def ListVoices(self, request: tts_pb2.ListVoicesRequest,
                         context: aio.ServicerContext) -> tts_pb2.ListVoicesResponse:
        try:
            voices = self.speaker.voices(request.language_code, request.engine.strip().lower())
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return tts_pb2.ListVoicesResponse(voices=[
            tts_pb2.Voice(engine=v.engine, name=v.name, language_codes=list(v.language_codes),
                          natural_sample_rate_hz=v.natural_sample_rate_hz, gender=v.gender) for v in voices])


def register_servicer(server: aio.Server, servicer: TextToSpeechServicer) -> Iterable[str]:
    tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, server)
    return [tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name]
