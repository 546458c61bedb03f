"""One recording of a Converse stream: the user's audio to STT and STT's replies back.

A recording is audio from the first chunk to `end_of_audio` (push-to-talk) or to the end of
the stream (hands-free); it may hold many utterances. Its STT stream survives faults:
- an instance that breaks is replaced and the kept audio replayed; what the first instance
  already said (speech started, finals) is not said twice, so a replay never looks like new
  speech (a barge-in) or a second answer;
- when no instance answers, the recording says so once, keeps buffering (bounded by the
  per-utterance limit) and replays when STT is back, giving up after `outage_seconds`;
- for PCM16 the audio of finished utterances is dropped, so a microphone open for hours
  holds only the current utterance in memory (a container stream cannot be cut: its header
  is needed to decode the rest).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry.trace import Span

from orchestrator.clients import Note, ReplayableStream, StageError, stt_stream
from orchestrator.intake import InputError
from voicebus.registry import ServiceRegistry
from voicebus.v1 import audio_pb2, stt_pb2

RETRY_PAUSE_SECONDS = 0.5
Event = stt_pb2.SpeechEventType


class ReplayFilter:
    """Numbers utterances across attempts and drops what an earlier attempt already reported.

    A new instance hears the kept audio from its start: `base` utterances and `offset` seconds
    were dropped before it, so its own indexes and offsets are shifted by them."""

    def __init__(self) -> None:
        self.finals = self.starts = self.ends = 0
        self.base = 0
        self.offset = 0.0

    def attempt(self) -> Callable[[stt_pb2.StreamingTranscribeResponse], Any]:
        base, offset = self.base, self.offset
        seen = {Event.SPEECH_EVENT_TYPE_SPEECH_STARTED: 0, Event.SPEECH_EVENT_TYPE_END_OF_UTTERANCE: 0}

        def keep(reply: stt_pb2.StreamingTranscribeResponse) -> stt_pb2.StreamingTranscribeResponse | None:
            kind = reply.WhichOneof("response")
            if kind == "event" and reply.event.type in seen:
                number = base + seen[reply.event.type]
                seen[reply.event.type] += 1
                if reply.event.type == Event.SPEECH_EVENT_TYPE_SPEECH_STARTED:
                    if number < self.starts:
                        return None
                    self.starts = number + 1
                else:
                    if number < self.ends:
                        return None
                    self.ends = number + 1
                reply.event.offset_seconds += offset
            elif kind == "result":
                index = base + reply.result.utterance_index
                if index < self.finals:
                    return None
                reply.result.utterance_index = index
                reply.result.transcript.audio_start_seconds += offset
                reply.result.transcript.audio_end_seconds += offset
                if reply.result.is_final:
                    self.finals = index + 1
            return reply

        return keep


class Recording:
    def __init__(self, registry: ServiceRegistry, config: stt_pb2.RecognitionConfig, max_utterance_bytes: int,
                 outage_seconds: float, final_seconds: float, note: Note | None = None) -> None:
        self.config = config
        self.max_utterance_bytes = max_utterance_bytes
        self.outage_seconds, self.final_seconds = outage_seconds, final_seconds
        self.replay = ReplayFilter()
        self.stream: ReplayableStream = stt_stream(registry, config, uuid.uuid4().hex, self.replay.attempt, note)
        self.utterance_bytes = 0  # since the last final: the per-utterance limit
        self._kept_start = 0  # absolute byte position of stream.items[0] (PCM16 only)
        self._closed_at = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._timed_out = False
        self.span: Span | None = None  # the recording's "listen" span

    @property
    def closed(self) -> bool:
        return self.stream.closed

    def send(self, data: bytes) -> None:
        self.utterance_bytes += len(data)
        if self.utterance_bytes > self.max_utterance_bytes:
            raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                             f"audio over the limit of {self.max_utterance_bytes / 1024 / 1024:g} MB for one "
                             "utterance")
        self.stream.send(stt_pb2.StreamingTranscribeRequest(audio=data))

    def close(self) -> None:
        """The user stopped (push-to-talk released): the final comes now, or the turn fails."""
        if self.stream.closed:
            return
        self.stream.close()
        self._deadline = asyncio.get_running_loop().call_later(self.final_seconds, self._expire)

    def _expire(self) -> None:
        self._timed_out = True
        self.stream.cancel()

    def cancel(self) -> None:
        if self._deadline:
            self._deadline.cancel()
        self.stream.cancel()

    def _utterance_done(self, result: stt_pb2.StreamingRecognitionResult) -> None:
        """A final: the next utterance's limit starts at zero; PCM16 audio before it is dropped."""
        self.utterance_bytes = 0
        if self.config.encoding != audio_pb2.AUDIO_ENCODING_PCM16 or not self.config.sample_rate_hz:
            return
        end = int(result.transcript.audio_end_seconds * self.config.sample_rate_hz) * 2
        position, count = self._kept_start, 0
        for item in self.stream.items:
            if position + len(item.audio) > end:
                break
            position += len(item.audio)
            count += 1
        if count:
            self.stream.drop_items(count)
            self._kept_start = position
            self.replay.base = result.utterance_index + 1
            self.replay.offset = position / 2 / self.config.sample_rate_hz

    async def replies(self, on_outage: Callable[[StageError], None]) -> AsyncIterator[
            stt_pb2.StreamingTranscribeResponse]:
        """STT's replies for this recording, across failovers and outages; raises StageError when
        the recording cannot be transcribed (bad audio, STT gone for good, no final in time)."""
        outage_until = 0.0
        while True:
            if self._timed_out:
                raise StageError("stt", grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"no transcript within {self.final_seconds:g} s")
            try:
                async for reply in self.stream.responses():
                    outage_until = 0.0
                    if reply.WhichOneof("response") == "result" and reply.result.is_final:
                        self._utterance_done(reply.result)
                    yield reply
                if self._deadline:
                    self._deadline.cancel()
                return
            except StageError as exc:
                if self._timed_out:
                    raise StageError("stt", grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"no transcript within {self.final_seconds:g} s") from None
                if exc.is_input_error or exc.code == grpc.StatusCode.CANCELLED:
                    raise
                now = time.monotonic()
                if not outage_until:
                    outage_until = now + self.outage_seconds
                    on_outage(exc)  # once per outage, not once per chunk
                if now >= outage_until:
                    raise
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
