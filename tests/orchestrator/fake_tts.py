"""A scripted TextToSpeech servicer: real sentence cutting, audio of a scripted length.

What matches the real service (tts_service/server.py): StreamingSynthesize reads the config
first (else INVALID_ARGUMENT; a second config is INVALID_ARGUMENT too), reads text in a
task of its own while it speaks, cuts it with the real `voicebus.text.SentenceSplitter`
(so the first piece may end at a clause), speaks one sentence at a time in text order,
and a half-close flushes the last sentence; a stream without any text, and a Synthesize
of empty text, are INVALID_ARGUMENT. Synthesize cuts with `split_sentences`. Each
message: SpokenSentence(sentence_index = the piece's index in the text, text, engine,
voice, audio = AudioChunk(format PCM16 or WAV at the asked or natural rate, mono;
sequence counting messages from 0; duration_seconds)); a sentence with no word (only
punctuation) is skipped, its index used up; every response carries the config's
request_id. Differences: the fake speaks PCM16 and WAV only (other encodings are
INVALID_ARGUMENT), and its audio is a quiet tone lasting `seconds_per_word` per word
(divided by the config's speaking_rate).
"""

from __future__ import annotations

import asyncio
import io
import re
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc import aio

from fake_common import CallRecord, FakeBase, Failure
from voicebus.text import SentenceSplitter, split_sentences
from voicebus.v1 import audio_pb2, tts_pb2, tts_pb2_grpc

RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_SPOKEN_ENCODINGS = (audio_pb2.AUDIO_ENCODING_PCM16, audio_pb2.AUDIO_ENCODING_WAV)
_END = object()


class _Refused(Exception):
    """A request the fake refuses, like the real service would: (code, message)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class TtsCall(CallRecord):
    kind: str = "stream"  # "stream" (StreamingSynthesize) or "unary" (Synthesize)
    config: tts_pb2.SynthesisConfig | None = None
    request_id: str = ""
    texts: list[str] = field(default_factory=list)  # the text pieces as received
    sentences: list[str] = field(default_factory=list)  # the sentences spoken, in order
    half_closed: bool = False
    sent: list[tts_pb2.SpokenSentence] = field(default_factory=list, repr=False)

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def audio_bytes(self) -> int:
        return sum(len(s.audio.data) for s in self.sent)


def pcm16_tone(seconds: float, rate: int) -> bytes:
    """A quiet 220 Hz tone: real samples, so a player or a level meter sees sound."""
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 220 * t) * 3000).astype("<i2").tobytes()


def wav_file(pcm: bytes, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


class FakeTTS(FakeBase, tts_pb2_grpc.TextToSpeechServicer):
    """Faults (on the calls `fail_times` allows), all ending the call with `fail_with`:
    `fail_on_open` at once, `fail_before_first_audio` when the first sentence's audio is
    ready, `fail_after_sentences=N` once N sentences went out. `hold_after_sentences=N`
    pauses after N sentences until `release()` (or the client cancels)."""

    def __init__(self, *, seconds_per_word: float = 0.3, synth_delay: float = 0.01,
                 seconds_for: Callable[[str], float] | None = None, engine: str = "fake",
                 voice: str = "fake-voice", sample_rate: int = 22050,
                 fail_with: Failure = (grpc.StatusCode.UNAVAILABLE, "speech synthesis failed: the fake broke"),
                 fail_on_open: bool = False, fail_before_first_audio: bool = False,
                 fail_after_sentences: int | None = None, fail_times: int | None = None,
                 hold_after_sentences: int | None = None) -> None:
        super().__init__()
        self.seconds_per_word, self.synth_delay, self.seconds_for = seconds_per_word, synth_delay, seconds_for
        self.engine, self.voice, self.sample_rate = engine, voice, sample_rate
        self.fail_with, self.fail_on_open = fail_with, fail_on_open
        self.fail_before_first_audio, self.fail_after_sentences = fail_before_first_audio, fail_after_sentences
        self.fail_times, self.hold_after_sentences = fail_times, hold_after_sentences
        self.calls: list[TtsCall] = []
        self._release = asyncio.Event()

    def release(self) -> None:
        self._release.set()

    def hold(self) -> None:
        self._release.clear()

    def seconds_of(self, sentence: str) -> float:
        """The audio length of one sentence, before the speaking rate."""
        if self.seconds_for is not None:
            return self.seconds_for(sentence)
        return len(re.findall(r"\w+", sentence)) * self.seconds_per_word

    @property
    def _faults_armed(self) -> bool:
        return self.fail_on_open or self.fail_before_first_audio or self.fail_after_sentences is not None

    async def Synthesize(self, request: tts_pb2.SynthesizeRequest,
                         context: aio.ServicerContext) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        call = TtsCall(kind="unary", config=request.config, request_id=request.request_id, texts=[request.text])
        self.calls.append(call)
        faulty = await self._open(call, context)
        feed: asyncio.Queue[object] = asyncio.Queue()
        if request.text.strip():
            for item in enumerate(split_sentences(request.text)):
                feed.put_nowait(item)
        else:
            feed.put_nowait(_Refused(grpc.StatusCode.INVALID_ARGUMENT, "the text is empty: there is nothing to speak"))
        feed.put_nowait(_END)
        try:
            async for spoken in self._speak(call, request.config, feed, context, faulty):
                yield tts_pb2.SynthesizeResponse(request_id=request.request_id, sentence=spoken)
        except (asyncio.CancelledError, GeneratorExit):
            call.end(self.interrupted_outcome())
            raise

    async def StreamingSynthesize(
        self, request_iterator: AsyncIterator[tts_pb2.StreamingSynthesizeRequest], context: aio.ServicerContext,
    ) -> AsyncIterator[tts_pb2.StreamingSynthesizeResponse]:
        call = TtsCall(kind="stream")
        self.calls.append(call)
        faulty = await self._open(call, context)
        requests = aiter(request_iterator)
        feed: asyncio.Queue[object] = asyncio.Queue()
        reader: asyncio.Task[None] | None = None
        try:
            first = await anext(requests, None)
            if first is None or first.WhichOneof("request") != "config":
                feed.put_nowait(_Refused(grpc.StatusCode.INVALID_ARGUMENT,
                                         "the first message of StreamingSynthesize must carry the config"))
            else:
                call.config, call.request_id = first.config, first.request_id
                reader = asyncio.create_task(self._read(requests, call, feed))
            async for spoken in self._speak(call, call.config or tts_pb2.SynthesisConfig(), feed, context, faulty):
                yield tts_pb2.StreamingSynthesizeResponse(request_id=call.request_id, sentence=spoken)
        except (asyncio.CancelledError, GeneratorExit):
            call.end(self.interrupted_outcome())
            raise
        finally:
            if reader is not None:
                reader.cancel()

    @staticmethod
    async def _read(requests: AsyncIterator[tts_pb2.StreamingSynthesizeRequest], call: TtsCall,
                    feed: asyncio.Queue[object]) -> None:
        """Client text into complete sentences as it comes; never waits for speaking."""
        splitter, index = SentenceSplitter(), 0
        try:
            async for request in requests:
                if request.WhichOneof("request") == "config":
                    feed.put_nowait(_Refused(grpc.StatusCode.INVALID_ARGUMENT,
                                             "the config may only be sent once, in the first message"))
                    return
                call.texts.append(request.text)
                for piece in splitter.push(request.text):
                    feed.put_nowait((index, piece))
                    index += 1
            call.half_closed = True
            if not call.text.strip():
                feed.put_nowait(_Refused(grpc.StatusCode.INVALID_ARGUMENT,
                                         "the stream ended without any text: there is nothing to speak"))
                return
            for piece in splitter.flush():
                feed.put_nowait((index, piece))
                index += 1
            feed.put_nowait(_END)
        except (grpc.RpcError, aio.AbortError, aio.UsageError):  # the client went away
            pass

    def _format(self, config: tts_pb2.SynthesisConfig) -> audio_pb2.AudioFormat:
        encoding = config.encoding or audio_pb2.AUDIO_ENCODING_PCM16
        if encoding not in _SPOKEN_ENCODINGS:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "the fake TTS speaks PCM16 and WAV only, not "
                           + audio_pb2.AudioEncoding.Name(encoding))
        rate = config.sample_rate_hz or self.sample_rate
        if rate not in RATES:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported sample rate {rate}")
        if not 0 <= config.speaking_rate <= 4:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"speaking_rate {config.speaking_rate:g} is out of range")
        return audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate, channels=1)

    async def _open(self, call: TtsCall, context: aio.ServicerContext) -> bool:
        """Whether this call's faults are armed; `fail_on_open` ends it here, before any reading."""
        faulty = self._faults_armed and self.take_fault()
        if faulty and self.fail_on_open:
            call.end("failed", self.fail_with)
            await context.abort(*self.fail_with)
        return faulty

    async def _speak(self, call: TtsCall, config: tts_pb2.SynthesisConfig, feed: asyncio.Queue[object],
                     context: aio.ServicerContext, faulty: bool) -> AsyncIterator[tts_pb2.SpokenSentence]:
        try:
            audio_format = self._format(config)
            if faulty and self.fail_after_sentences == 0:
                raise _Refused(*self.fail_with)
            while (item := await feed.get()) is not _END:
                if isinstance(item, _Refused):
                    raise item
                index, text = item  # type: ignore[misc]
                if len(call.sent) == self.hold_after_sentences:
                    await self._release.wait()
                await asyncio.sleep(self.synth_delay)
                seconds = self.seconds_of(text) / (config.speaking_rate or 1.0)
                if seconds <= 0:
                    continue  # nothing to say (punctuation only): skipped, like the real service
                if faulty and self.fail_before_first_audio and not call.sent:
                    raise _Refused(*self.fail_with)
                pcm = pcm16_tone(seconds, audio_format.sample_rate_hz)
                data = pcm if audio_format.encoding == audio_pb2.AUDIO_ENCODING_PCM16 \
                    else wav_file(pcm, audio_format.sample_rate_hz)
                spoken = tts_pb2.SpokenSentence(
                    audio=audio_pb2.AudioChunk(data=data, format=audio_format, sequence=len(call.sent),
                                               duration_seconds=len(pcm) / 2 / audio_format.sample_rate_hz),
                    sentence_index=index, text=text, engine=config.engine or self.engine,
                    voice=config.voice or self.voice)
                call.sent.append(spoken)
                call.sentences.append(text)
                yield spoken
                if faulty and self.fail_after_sentences is not None and len(call.sent) >= self.fail_after_sentences:
                    raise _Refused(*self.fail_with)
            call.end("ok")
        except _Refused as refused:
            call.end("failed", (refused.code, refused.message))
            await context.abort(refused.code, refused.message)
        except (asyncio.CancelledError, GeneratorExit):
            call.end(self.interrupted_outcome())
            raise

    async def ListVoices(self, request: tts_pb2.ListVoicesRequest,
                         context: aio.ServicerContext) -> tts_pb2.ListVoicesResponse:
        voice = tts_pb2.Voice(engine=self.engine, name=self.voice, language_codes=["en", "hi"],
                              natural_sample_rate_hz=self.sample_rate, gender="female")
        wanted = request.language_code.split("-")[0].lower()
        if (request.engine and request.engine != self.engine) or (wanted and wanted not in voice.language_codes):
            return tts_pb2.ListVoicesResponse()
        return tts_pb2.ListVoicesResponse(voices=[voice])
