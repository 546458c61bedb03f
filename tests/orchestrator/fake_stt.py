"""A scripted SpeechToText servicer: utterances placed on the stream's audio timeline.

Time in a stream is the audio received so far (PCM16: bytes / 2 / sample rate), never the
wall clock, so a test decides exactly when each event comes by how much audio it sends.
Only `final_delay` is real time (the decode after the end of the utterance).

What matches the real service (stt_service/server.py and streaming.py):
- the first message must be the config (else INVALID_ARGUMENT), and only the first; PCM16
  without a sample rate and a negative end_of_utterance_silence_ms are INVALID_ARGUMENT;
- every response carries the config message's request_id and the model name;
- per utterance: SPEECH_STARTED (offset = speech start), interim results only when the
  config asks for them (is_final=False, stability = share of words agreeing with the
  previous interim), END_OF_UTTERANCE once the silence after the speech lasts
  end_of_utterance_silence_ms (the config's, else `eou_silence`) with offset = speech
  END (not the moment the silence was declared), then the final (is_final=True,
  stability 1.0, utterance_index counting from 0 in the stream, latency_seconds from
  the arrival of the audio that ended the speech); transcripts carry
  audio_start/end_seconds = the speech's start and end, no_speech = empty text;
- a half-close finishes the utterance in progress at once (a still-running utterance ends
  at the audio received); a stream that heard no utterance gets one empty final
  (no_speech, no_speech_probability 1.0, index 0, audio_end = the audio received);
- single_utterance ends the stream after the first final.
Differences: the fake never decodes, so a half-close mid-utterance still returns the
whole scripted text; utterances come strictly in script order; any encoding is timed as
PCM16 at the config's rate (16000 when it has none), so WebM bytes also move time on.

A fault ends the call while the client may still be writing; grpcio's asyncio client then
sometimes reports INTERNAL "Internal error from Core" instead of the server's status
(grpc/grpc#36066) — with the real services too, so the orchestrator must treat both alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc import aio

from fake_common import CallRecord, FakeBase, Failure
from voicebus.v1 import audio_pb2, stt_pb2, stt_pb2_grpc

MODEL = "fake-stt"
_END = object()


@dataclass(frozen=True)
class _Abort:
    """From the reader to the stream: end the call with this status (a fault or a protocol error)."""

    code: grpc.StatusCode
    message: str


@dataclass
class Utterance:
    """One thing the user says, at [start, end] seconds of the stream's audio."""

    start: float
    end: float
    text: str
    interims: list[str] = field(default_factory=list)
    confidence: float = 0.9
    language: str = "en"
    no_speech: bool = False  # whisper heard nothing it trusts: the final's text is empty

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"an utterance needs 0 <= start <= end, not {self.start}..{self.end}")

    @property
    def heard_text(self) -> str:
        return "" if self.no_speech else self.text

    def interim_at(self, position: int) -> float:
        """Interims spread evenly strictly between start and end."""
        return self.start + (self.end - self.start) * (position + 1) / (len(self.interims) + 1)


def _check_script(script: list[Utterance]) -> list[Utterance]:
    for before, after in zip(script, script[1:]):
        if after.start < before.end:
            raise ValueError(f"utterances overlap: {before.text!r} ends at {before.end}, "
                             f"{after.text!r} starts at {after.start}")
    return list(script)


@dataclass
class SttStream(CallRecord):
    """One StreamingTranscribe call as the fake saw it."""

    config: stt_pb2.RecognitionConfig | None = None
    request_id: str = ""
    messages: int = 0  # every request message, the config included
    audio_bytes: int = 0
    half_closed: bool = False
    sent: list[stt_pb2.StreamingTranscribeResponse] = field(default_factory=list, repr=False)
    sent_at: list[float] = field(default_factory=list, repr=False)  # audio seconds received when each was sent

    @property
    def finals(self) -> list[str]:
        return [r.result.transcript.text for r in self.sent if r.HasField("result") and r.result.is_final]


@dataclass
class _Open:
    """The utterance being heard."""

    utterance: Utterance
    index: int
    interims_sent: int = 0
    last_words: list[str] = field(default_factory=list)
    end_arrival: float | None = None  # monotonic time the audio past its end arrived


class _Timeline:
    """Audio positions in, responses out, in the real service's order."""

    def __init__(self, fake: FakeSTT, script: list[Utterance], config: stt_pb2.RecognitionConfig,
                 record: SttStream) -> None:
        self.fake, self.script, self.config, self.record = fake, script, config, record
        self.rate = config.sample_rate_hz or 16000
        self.silence = config.end_of_utterance_silence_ms / 1000 if config.end_of_utterance_silence_ms \
            else fake.eou_silence
        self.received = 0  # bytes of audio
        self.next_in_script = 0
        self.heard = 0  # utterances opened so far: the next utterance_index
        self.finals = 0
        self.open: _Open | None = None
        self.done = False

    @property
    def position(self) -> float:
        """Seconds of audio received (from the byte count, so no rounding error piles up)."""
        return self.received / 2 / self.rate

    def passed(self, seconds: float) -> bool:
        return self.position >= seconds - 1e-9  # 0.3 + 1.2 / 3 must be reached at 0.7 s

    async def on_audio(self, nbytes: int, arrival: float) -> AsyncIterator[stt_pb2.StreamingTranscribeResponse]:
        self.received += nbytes
        while not self.done:
            if self.open is None:
                if self.next_in_script >= len(self.script) or not self.passed(self.script[self.next_in_script].start):
                    return
                u = self.script[self.next_in_script]
                self.open = _Open(u, self.heard)
                self.heard += 1
                yield self._event(stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED, u.start)
            o, u = self.open, self.open.utterance
            while o.interims_sent < len(u.interims) and self.passed(u.interim_at(o.interims_sent)):
                text = u.interims[o.interims_sent]
                o.interims_sent += 1
                if self.config.interim_results:
                    yield self._interim(o, text)
            if self.passed(u.end) and o.end_arrival is None:
                o.end_arrival = arrival
            if not self.passed(u.end + self.silence):
                return
            async for response in self._finish(u.end):
                yield response

    async def on_end(self) -> AsyncIterator[stt_pb2.StreamingTranscribeResponse]:
        if self.done:
            return
        if self.open is not None:
            if self.open.end_arrival is None:  # still speaking when the client half-closed
                self.open.end_arrival = time.monotonic()
            async for response in self._finish(min(self.open.utterance.end, self.position)):
                yield response
        elif self.finals == 0:
            yield self._result(stt_pb2.StreamingRecognitionResult(
                transcript=stt_pb2.Transcript(language_code=self.config.language_code, no_speech=True,
                                              no_speech_probability=1.0, audio_end_seconds=self.position),
                is_final=True, stability=1.0, utterance_index=0, latency_seconds=0.0))

    async def _finish(self, speech_end: float) -> AsyncIterator[stt_pb2.StreamingTranscribeResponse]:
        o = self.open
        assert o is not None and o.end_arrival is not None
        yield self._event(stt_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE, speech_end)
        await asyncio.sleep(self.fake.final_delay)
        self.open, self.next_in_script = None, self.next_in_script + 1
        self.finals += 1
        yield self._result(stt_pb2.StreamingRecognitionResult(
            transcript=self._transcript(o.utterance, o.utterance.heard_text, speech_end), is_final=True,
            stability=1.0, utterance_index=o.index, latency_seconds=time.monotonic() - o.end_arrival))
        self.done = self.config.single_utterance

    def _interim(self, o: _Open, text: str) -> stt_pb2.StreamingTranscribeResponse:
        words = text.lower().split()
        agreed = sum(1 for a, b in zip(words, o.last_words) if a == b)
        o.last_words = words
        return self._result(stt_pb2.StreamingRecognitionResult(
            transcript=self._transcript(o.utterance, text, min(self.position, o.utterance.end)),
            is_final=False, stability=agreed / len(words) if words else 0.0, utterance_index=o.index))

    @staticmethod
    def _transcript(u: Utterance, text: str, speech_end: float) -> stt_pb2.Transcript:
        no_speech = not text
        return stt_pb2.Transcript(
            text=text, language_code=u.language, language_probability=0.99 if u.language else 0.0,
            confidence=0.0 if no_speech else u.confidence, no_speech_probability=0.9 if no_speech else 0.05,
            no_speech=no_speech, audio_start_seconds=u.start, audio_end_seconds=speech_end,
            segments=[] if no_speech else [stt_pb2.TranscriptSegment(
                text=text, start_seconds=u.start, end_seconds=speech_end, confidence=u.confidence,
                no_speech_probability=0.05)])

    def _event(self, kind: int, offset: float) -> stt_pb2.StreamingTranscribeResponse:
        return self._send(stt_pb2.StreamingTranscribeResponse(
            event=stt_pb2.SpeechEvent(type=kind, offset_seconds=offset)))

    def _result(self, result: stt_pb2.StreamingRecognitionResult) -> stt_pb2.StreamingTranscribeResponse:
        return self._send(stt_pb2.StreamingTranscribeResponse(result=result))

    def _send(self, response: stt_pb2.StreamingTranscribeResponse) -> stt_pb2.StreamingTranscribeResponse:
        response.request_id, response.model = self.record.request_id, MODEL
        self.record.sent.append(response)
        self.record.sent_at.append(self.position)
        return response


DEFAULT_UTTERANCE = Utterance(start=0.3, end=1.5, text="what is the capital of france",
                              interims=["what is", "what is the capital"])


class FakeSTT(FakeBase, stt_pb2_grpc.SpeechToTextServicer):
    """`script`: what every stream hears (default: DEFAULT_UTTERANCE); `scripts`: stream k
    hears scripts[k] (the last repeats). `Transcribe` call k answers with utterance k of the
    script (or of all scripts in a row; the last repeats). Records: `streams`, and
    `transcribe_requests`.

    Faults (on the calls `fail_times` allows): `fail_on_open` aborts a call at once;
    `fail_after_messages=N` aborts a stream once N request messages (the config counts)
    arrived; both with `fail_with` = (code, message)."""

    def __init__(self, script: list[Utterance] | None = None, *, scripts: list[list[Utterance]] | None = None,
                 eou_silence: float = 0.5, final_delay: float = 0.02,
                 fail_with: Failure = (grpc.StatusCode.UNAVAILABLE, "the fake speech recognizer failed"),
                 fail_on_open: bool = False, fail_after_messages: int | None = None,
                 fail_times: int | None = None) -> None:
        super().__init__()
        if script is not None and scripts is not None:
            raise ValueError("give script or scripts, not both")
        if script is None and scripts is None:
            script = [DEFAULT_UTTERANCE]  # pairs with FakeLLM's default answer; script=[] hears nobody
        self.scripts = [_check_script(s) for s in scripts] if scripts else [_check_script(script or [])]
        self.eou_silence, self.final_delay = eou_silence, final_delay
        self.fail_with, self.fail_on_open, self.fail_after_messages = fail_with, fail_on_open, fail_after_messages
        self.fail_times = fail_times
        self.streams: list[SttStream] = []
        self.transcribe_requests: list[stt_pb2.TranscribeRequest] = []

    @property
    def calls(self) -> list[SttStream]:  # type: ignore[override]
        return self.streams

    def script_for(self, stream_number: int) -> list[Utterance]:
        return self.scripts[min(stream_number, len(self.scripts) - 1)]

    async def Transcribe(self, request: stt_pb2.TranscribeRequest,
                         context: aio.ServicerContext) -> stt_pb2.TranscribeResponse:
        self.transcribe_requests.append(request)
        if self.fail_on_open and self.take_fault():
            await context.abort(*self.fail_with)
        config = request.config
        if config.encoding == audio_pb2.AUDIO_ENCODING_PCM16 and config.sample_rate_hz <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "PCM16 audio needs config.sample_rate_hz")
        pool = [u for script in self.scripts for u in script]
        duration = len(request.audio) / 2 / (config.sample_rate_hz or 16000)
        await asyncio.sleep(self.final_delay)
        if not pool:
            transcript = stt_pb2.Transcript(no_speech=True, no_speech_probability=1.0, audio_end_seconds=duration)
        else:
            u = pool[min(len(self.transcribe_requests) - 1, len(pool) - 1)]
            transcript = _Timeline._transcript(u, u.heard_text, duration)
            transcript.audio_start_seconds = 0.0
        return stt_pb2.TranscribeResponse(request_id=request.request_id, transcript=transcript,
                                          audio_duration_seconds=duration, processing_seconds=self.final_delay,
                                          model=MODEL)

    async def StreamingTranscribe(self, request_iterator: AsyncIterator[stt_pb2.StreamingTranscribeRequest],
                                  context: aio.ServicerContext) -> AsyncIterator[stt_pb2.StreamingTranscribeResponse]:
        record = SttStream()
        self.streams.append(record)
        faulty = (self.fail_on_open or self.fail_after_messages is not None) and self.take_fault()
        items: asyncio.Queue[object] = asyncio.Queue()
        reader: asyncio.Task[None] | None = None
        try:
            if faulty and self.fail_on_open:
                record.end("failed", self.fail_with)
                await context.abort(*self.fail_with)
            requests = aiter(request_iterator)
            first = await anext(requests, None)
            record.messages += first is not None
            if first is None or first.WhichOneof("request") != "config":
                await self._refuse(record, context, "the first message of a stream must be the config")
            record.config, record.request_id = first.config, first.request_id
            if first.config.encoding == audio_pb2.AUDIO_ENCODING_PCM16 and first.config.sample_rate_hz <= 0:
                await self._refuse(record, context, "PCM16 audio needs config.sample_rate_hz")
            if first.config.end_of_utterance_silence_ms < 0:
                await self._refuse(record, context, "end_of_utterance_silence_ms cannot be negative")
            timeline = _Timeline(self, self.script_for(len(self.streams) - 1), first.config, record)
            limit = self.fail_after_messages if faulty else None
            reader = asyncio.create_task(self._read(requests, record, items, limit))
            while not timeline.done:
                item = await items.get()
                if item is _END:
                    async for response in timeline.on_end():
                        yield response
                    break
                if isinstance(item, _Abort):
                    record.end("failed", (item.code, item.message))
                    await context.abort(item.code, item.message)
                nbytes, arrival = item  # type: ignore[misc]
                async for response in timeline.on_audio(nbytes, arrival):
                    yield response
            record.end("ok")
        except (asyncio.CancelledError, GeneratorExit):
            record.end(self.interrupted_outcome())
            raise
        except Exception as exc:  # aborts were recorded already; anything else is a bug in the fake
            record.end("failed", (grpc.StatusCode.INTERNAL, repr(exc)))
            raise
        finally:
            if reader is not None:
                reader.cancel()

    @staticmethod
    async def _refuse(record: SttStream, context: aio.ServicerContext, message: str) -> None:
        record.end("failed", (grpc.StatusCode.INVALID_ARGUMENT, message))
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

    async def _read(self, requests: AsyncIterator[stt_pb2.StreamingTranscribeRequest], record: SttStream,
                    items: asyncio.Queue[object], fail_after: int | None) -> None:
        """Client messages in as they come; the timeline never holds up reading (like the real one)."""
        if fail_after is not None and record.messages >= fail_after:
            items.put_nowait(_Abort(*self.fail_with))
            return
        try:
            async for request in requests:
                record.messages += 1
                if request.WhichOneof("request") == "config":
                    items.put_nowait(_Abort(grpc.StatusCode.INVALID_ARGUMENT, "a second config arrived"))
                    return
                record.audio_bytes += len(request.audio)
                if request.audio:
                    items.put_nowait((len(request.audio), time.monotonic()))
                if fail_after is not None and record.messages >= fail_after:
                    items.put_nowait(_Abort(*self.fail_with))
                    return
            record.half_closed = True
            items.put_nowait(_END)
        except (grpc.RpcError, aio.AbortError, aio.UsageError):  # the client went away
            pass
