"""The SpeechToText gRPC adapter: checks requests, maps errors to status codes, moves bytes.

Bad input ends the call with INVALID_ARGUMENT and a message a person understands; a
full inference queue ends it with RESOURCE_EXHAUSTED at once. The service keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from stt_service.audio_input import StreamingAudioInput
from stt_service.engine import InferenceQueue, Overloaded, UnsupportedLanguage, WhisperEngine, make_transcript
from stt_service.settings import SttSettings
from stt_service.streaming import StreamingRecognizer, StreamOptions
from voicebus.audio import (SUPPORTED_PCM_RATES, WHISPER_RATE, AudioError, check_wav_header, decode_audio,
                            too_long)
from voicebus.logs import request_id_var
from voicebus.metrics import QUEUE_DEPTH, STT_SECONDS
from voicebus.telemetry import tracer
from voicebus.v1 import audio_pb2, stt_pb2, stt_pb2_grpc

log = logging.getLogger(__name__)
_DONE = object()
MAX_DETAILS = 1_000


class InvalidInput(ValueError):
    """A request that breaks the protocol (not the audio itself)."""


def details(exc: Exception) -> str:
    """An error's message as status details. They travel as metadata, which gRPC caps at
    16 KB: a message quoting 17 KB of a client's input would turn into RESOURCE_EXHAUSTED."""
    message = str(exc)
    return message if len(message) <= MAX_DETAILS else message[:MAX_DETAILS] + "..."


def undecodable(exc: DecodeError) -> str:
    return f"a message of the stream is not a StreamingTranscribeRequest ({exc})"


def check_config(config: stt_pb2.RecognitionConfig) -> None:
    if config.encoding == audio_pb2.AUDIO_ENCODING_PCM16 and config.sample_rate_hz <= 0:
        raise AudioError("PCM16 audio needs config.sample_rate_hz (one of "
                         + ", ".join(str(r) for r in SUPPORTED_PCM_RATES) + ")")
    if config.encoding not in audio_pb2.AudioEncoding.values():
        raise AudioError(f"unknown audio encoding {config.encoding}")


class SpeechToTextServicer(stt_pb2_grpc.SpeechToTextServicer):
    def __init__(self, engine: WhisperEngine, settings: SttSettings) -> None:
        self.engine, self.settings = engine, settings
        self.jobs = InferenceQueue(max_waiting=settings.stt_max_queue,
                                   max_waiting_finals=settings.stt_max_waiting_finals)
        QUEUE_DEPTH.labels(queue="stt_inference").set_function(lambda: self.jobs.in_flight)

    # --- Transcribe ---------------------------------------------------------------
    async def Transcribe(self, request: stt_pb2.TranscribeRequest,
                         context: aio.ServicerContext) -> stt_pb2.TranscribeResponse:
        started = time.perf_counter()
        request_id_var.set(request.request_id)
        s = self.settings
        try:
            check_config(request.config)
            language = self.engine.language_for(request.config.language_code)
            if len(request.audio) > s.stt_max_audio_mb * 1_000_000:
                raise AudioError(f"the audio is {len(request.audio) / 1e6:.1f} MB; the limit is {s.stt_max_audio_mb:g} MB")
            if request.config.encoding != audio_pb2.AUDIO_ENCODING_PCM16:
                check_wav_header(request.audio, s.stt_max_audio_seconds)  # bad input is refused even when busy
            self.jobs.check_room()  # fail fast, before spending time on decoding
            # decode_audio refuses absurd sample rates and over-long audio from the header, and
            # stops decoding past the limit: one request holds at most stt_max_audio_seconds of samples.
            audio = await asyncio.to_thread(decode_audio, request.audio, request.config.encoding,
                                            request.config.sample_rate_hz, max_seconds=s.stt_max_audio_seconds)
            duration = audio.size / WHISPER_RATE
            if duration > s.stt_max_audio_seconds:
                raise too_long(duration, s.stt_max_audio_seconds)
            with tracer(__name__).start_as_current_span("stt.transcribe", attributes={
                    "stt.audio_seconds": duration, "stt.model": self.engine.name,
                    "stt.language_hint": language or ""}) as span:
                heard = await self.jobs.run(self.engine.transcribe, audio, language=language,
                                            beam_size=s.stt_beam_size, timestamps=True, vad_filter=True,
                                            fallback=True)
                span.set_attributes({"stt.language": heard.language, "stt.inference_seconds": heard.seconds})
        except (AudioError, UnsupportedLanguage) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details(exc))
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details(exc))
        transcript = make_transcript(heard.segments, heard.language, heard.language_probability, 0.0, duration,
                                     heard.dropped_no_speech)
        elapsed = time.perf_counter() - started
        STT_SECONDS.labels(kind="file").observe(elapsed)
        log.info("transcribed", extra={"fields": {"audio_seconds": round(duration, 2),
                                                  "processing_seconds": round(elapsed, 3),
                                                  "chars": len(transcript.text)}})
        return stt_pb2.TranscribeResponse(request_id=request.request_id, transcript=transcript,
                                          audio_duration_seconds=duration, processing_seconds=elapsed,
                                          model=self.engine.name)

    # --- StreamingTranscribe ------------------------------------------------------
    def _stream_options(self, config: stt_pb2.RecognitionConfig) -> StreamOptions:
        s = self.settings
        check_config(config)
        if config.end_of_utterance_silence_ms < 0:
            raise InvalidInput("end_of_utterance_silence_ms cannot be negative")
        silence_ms = config.end_of_utterance_silence_ms or s.stt_end_of_utterance_ms
        return StreamOptions(
            language=self.engine.language_for(config.language_code),
            interim_results=config.interim_results, single_utterance=config.single_utterance,
            end_of_utterance=int(silence_ms * WHISPER_RATE / 1000),
            unfinished_end_of_utterance=int(max(silence_ms, s.stt_unfinished_end_of_utterance_ms) * WHISPER_RATE / 1000),
            interim_interval=int(s.stt_interim_interval_ms * WHISPER_RATE / 1000),
            min_speech_windows=max(1, round(s.stt_min_speech_ms / 32)), threshold=s.stt_vad_threshold,
            commit_after=int(s.stt_commit_after_seconds * WHISPER_RATE),
            max_stream=int(s.stt_max_stream_seconds * WHISPER_RATE),
            final_beam=s.stt_final_beam_size, interim_beam=s.stt_interim_beam_size,
            min_window=s.stt_stream_window_seconds)

    async def StreamingTranscribe(
        self, request_iterator: AsyncIterator[stt_pb2.StreamingTranscribeRequest], context: aio.ServicerContext,
    ) -> AsyncIterator[stt_pb2.StreamingTranscribeResponse]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()  # audio blocks from the input thread
        out: asyncio.Queue[object] = asyncio.Queue()  # responses, then _DONE or an exception
        audio_in: StreamingAudioInput | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            first = await self._first(request_iterator)
            if first is None or first.WhichOneof("request") != "config":
                raise InvalidInput("the first message of a stream must be the config (RecognitionConfig); "
                                   + ("the stream was empty" if first is None else "audio came first"))
            request_id_var.set(first.request_id)
            config = first.config
            options = self._stream_options(config)
            audio_in = StreamingAudioInput(config.encoding, config.sample_rate_hz,
                                           lambda item: loop.call_soon_threadsafe(items.put_nowait, item))
            audio_in.start()
            recognizer = StreamingRecognizer(self.engine, self.jobs, options, out.put_nowait, first.request_id)
            tasks.append(asyncio.create_task(self._read(request_iterator, audio_in, items)))
            tasks.append(asyncio.create_task(self._recognize(recognizer, items, out)))
            while (item := await out.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        except (AudioError, InvalidInput, UnsupportedLanguage) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details(exc))
        except Overloaded as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details(exc))
        except (aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:  # never a stack trace to the client; the log has it
            log.exception("streaming recognition failed")
            await context.abort(grpc.StatusCode.INTERNAL, "speech recognition failed unexpectedly")
        finally:
            if audio_in is not None:
                audio_in.stop()
            for task in tasks:
                task.cancel()

    @staticmethod
    async def _first(requests: AsyncIterator[stt_pb2.StreamingTranscribeRequest],
                     ) -> stt_pb2.StreamingTranscribeRequest | None:
        try:
            return await anext(aiter(requests), None)
        except DecodeError as exc:
            raise InvalidInput(undecodable(exc)) from None

    @staticmethod
    async def _read(requests: AsyncIterator[stt_pb2.StreamingTranscribeRequest], audio_in: StreamingAudioInput,
                    items: asyncio.Queue[object]) -> None:
        """Client messages to the input thread; never waits for recognition."""
        try:
            async for request in requests:
                kind = request.WhichOneof("request")
                if kind == "config":
                    raise InvalidInput("a second config arrived; send the config once, as the first message")
                if kind == "audio":
                    audio_in.feed(request.audio)
            audio_in.close()
        except InvalidInput as exc:
            audio_in.stop()
            items.put_nowait(exc)
        except DecodeError as exc:  # bytes that are no StreamingTranscribeRequest, mid-stream
            audio_in.stop()
            items.put_nowait(InvalidInput(undecodable(exc)))
        except (grpc.RpcError, aio.AbortError, aio.UsageError):  # the client went away
            audio_in.stop()

    @staticmethod
    async def _recognize(recognizer: StreamingRecognizer, items: asyncio.Queue[object],
                         out: asyncio.Queue[object]) -> None:
        try:
            await recognizer.run(items)
            out.put_nowait(_DONE)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # ends the call with a status chosen by StreamingTranscribe
            out.put_nowait(exc)
