"""A `Converse` stream: audio, text and control messages in; turn events out.

Reading the client's messages, transcribing, answering and writing events run as
separate tasks, so a barge-in is handled the moment speech starts: the running turn is
cancelled and its queued events are dropped before they reach the client.

Tracing: the stream lives for many turns, so each turn gets a trace of its own rather
than the stream's. A typed turn's span continues `ConverseRequest.traceparent` of its
`text`; a recording (audio up to `end_of_audio`) gets a "listen" span continuing the
traceparent of its first audio, parent of the STT call and of the turns heard in it.
Without a traceparent the turn (or recording) starts a new trace, linked to the stream's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, Status, StatusCode

from orchestrator.clients import ReplayableStream, StageError, stt_stream
from orchestrator.turn import Deps, TurnRunner, UserInput, turn_span
from voicebus.audio import SUPPORTED_PCM_RATES
from voicebus.metrics import ACTIVE_STREAMS
from voicebus.telemetry import attached, context_from_traceparent, current_trace_id, trace_id_of, tracer
from voicebus.v1 import assistant_pb2, audio_pb2, common_pb2, events_pb2, stt_pb2

log = logging.getLogger(__name__)


class StreamEnd(Exception):
    """Ends the Converse stream with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class ConversationLocks:
    """At most one running turn per conversation, across streams and ProcessTurn calls."""

    def __init__(self) -> None:
        self._running: dict[str, str] = {}

    def acquire(self, conversation_id: str, turn_id: str) -> bool:
        if conversation_id in self._running:
            return False
        self._running[conversation_id] = turn_id
        return True

    def release(self, conversation_id: str, turn_id: str) -> None:
        if self._running.get(conversation_id) == turn_id:
            del self._running[conversation_id]


def check_input_format(fmt: audio_pb2.AudioFormat) -> None:
    if fmt.encoding == audio_pb2.AUDIO_ENCODING_PCM16 and fmt.sample_rate_hz not in SUPPORTED_PCM_RATES:
        raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT,
                        f"PCM16 input needs a sample_rate_hz of {', '.join(map(str, SUPPORTED_PCM_RATES))}; "
                        f"got {fmt.sample_rate_hz}")


class ConverseSession:
    def __init__(self, deps: Deps, locks: ConversationLocks) -> None:
        self.deps, self.locks = deps, locks
        self.config = assistant_pb2.ConverseConfig()
        self.conversation_id = ""
        self._out: asyncio.Queue[assistant_pb2.ConverseResponse | StreamEnd | None] = asyncio.Queue()
        self._dead_turns: set[str] = set()
        self._stt: ReplayableStream | None = None
        self._stt_task: asyncio.Task[None] | None = None
        self._audio_bytes = 0
        self._pending: assistant_pb2.Turn | None = None  # the utterance being transcribed
        self._speech_end_at = 0.0
        self._running: asyncio.Task[assistant_pb2.Turn] | None = None
        self._running_turn: assistant_pb2.Turn | None = None
        self._watchdogs: set[asyncio.Task[None]] = set()
        self._runners: dict[str, TurnRunner] = {}  # running turns, by id
        self._listen: Span | None = None  # the span of the recording being received
        self._stream_links: list[Link] = []

    def _turn_parent(self, traceparent: str) -> tuple[otel_context.Context, list[Link]]:
        """Where a turn's (or recording's) trace comes from: the client's traceparent, else a new
        trace linked to the stream's span."""
        parent = context_from_traceparent(traceparent)
        if parent is not None:
            return parent, []
        return otel_context.Context(), self._stream_links

    # -- output ------------------------------------------------------------------------------
    def emit(self, event: assistant_pb2.ConverseResponse) -> None:
        if event.turn_id in self._dead_turns and event.WhichOneof("event") != "turn_interrupted":
            return
        self._out.put_nowait(event)

    def _event(self, turn_id: str = "", **fields: object) -> None:
        if turn_id and "trace_id" not in fields:  # every event of a turn names the turn's trace
            fields["trace_id"] = next((t.trace_id for t in (self._pending, self._running_turn)
                                       if t is not None and t.turn_id == turn_id), "")
        self.emit(assistant_pb2.ConverseResponse(conversation_id=self.conversation_id, turn_id=turn_id,
                                                 **fields))  # type: ignore[arg-type]

    def _error(self, code: grpc.StatusCode, message: str, stage: int, turn_id: str = "", trace_id: str = "") -> None:
        ids = {"trace_id": trace_id} if trace_id else {}
        self._event(turn_id, **ids, error=common_pb2.StreamError(
            code=code.value[0], message=message, stage=stage, retryable=code == grpc.StatusCode.UNAVAILABLE))

    async def run(self, requests: AsyncIterator[assistant_pb2.ConverseRequest]
                  ) -> AsyncIterator[assistant_pb2.ConverseResponse | StreamEnd]:
        stream_span = trace.get_current_span().get_span_context()  # the Converse call's server span
        self._stream_links = [Link(stream_span)] if stream_span.is_valid else []
        reader = asyncio.create_task(self._read(requests))
        ACTIVE_STREAMS.inc()
        try:
            while True:
                item = await self._out.get()
                if item is None or isinstance(item, StreamEnd):
                    if item is not None:
                        yield item
                    return
                if item.turn_id in self._dead_turns and item.WhichOneof("event") != "turn_interrupted":
                    continue  # queued before the barge-in: never delivered
                if runner := self._runners.get(item.turn_id):
                    runner.delivered(item)
                yield item
        finally:
            ACTIVE_STREAMS.dec()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self._shutdown()

    # -- input -------------------------------------------------------------------------------
    async def _read(self, requests: AsyncIterator[assistant_pb2.ConverseRequest]) -> None:
        try:
            await self._open(requests)
            async for request in requests:
                kind = request.WhichOneof("request")
                if kind == "audio":
                    await self._on_audio(request.audio, request.traceparent)
                elif kind == "end_of_audio":
                    self._end_audio()
                elif kind == "text":
                    self._on_text(request.text, request.traceparent)
                elif kind == "interrupt":
                    await self._interrupt()
                elif kind == "config":
                    raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, "config was already sent; send it only once, first")
                else:
                    raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, "empty message: set audio, text, interrupt "
                                                                      "or end_of_audio")
            # The client half-closed: finish what is under way, then end the stream.
            self._end_audio()
            if self._stt_task:
                await self._stt_task
            if self._running:
                await self._running
            self._out.put_nowait(None)
        except StreamEnd as end:
            self._out.put_nowait(end)
        except Exception as exc:  # noqa: BLE001 - the client gets a status, not a hang
            log.exception("converse stream failed")
            self._out.put_nowait(StreamEnd(grpc.StatusCode.INTERNAL, f"internal error: {exc.__class__.__name__}"))

    async def _open(self, requests: AsyncIterator[assistant_pb2.ConverseRequest]) -> None:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("request") != "config":
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a config")
        self.config = first.config
        check_input_format(self.config.input_format)
        store = self.deps.store
        if self.config.conversation_id:
            if not await store.exists(self.config.conversation_id):
                raise StreamEnd(grpc.StatusCode.NOT_FOUND, f"no conversation {self.config.conversation_id!r}")
            self.conversation_id, created = self.config.conversation_id, False
        else:
            self.conversation_id, created = await store.create_conversation(), True
        count = await store.turn_count(self.conversation_id)
        self._event(conversation_opened=assistant_pb2.ConversationOpened(created=created, turn_count=count))

    async def _on_audio(self, data: bytes, traceparent: str = "") -> None:
        if not data:
            return
        self._audio_bytes += len(data)
        if self._audio_bytes > self.deps.settings.max_audio_mb * 1024 * 1024:
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT,
                            f"audio over the limit of {self.deps.settings.max_audio_mb:g} MB for one utterance")
        if self._stt is None:
            fmt = self.config.input_format
            config = stt_pb2.RecognitionConfig(
                encoding=fmt.encoding, sample_rate_hz=fmt.sample_rate_hz,
                language_code=self.config.options.language_code, interim_results=self.config.interim_results,
                end_of_utterance_silence_ms=self.config.end_of_utterance_silence_ms)
            parent, links = self._turn_parent(traceparent)
            listen = tracer("voicebus.orchestrator").start_span(
                "listen", context=parent, links=links, attributes={"voicebus.conversation_id": self.conversation_id})
            self._listen = listen
            self._stt = stt_stream(self.deps.registry, config, uuid.uuid4().hex)
            with attached(trace.set_span_in_context(listen)):  # the STT call and the turns heard are its children
                self._stt_task = asyncio.create_task(self._transcribe(self._stt, listen))
        self._stt.send(stt_pb2.StreamingTranscribeRequest(audio=data))

    def _end_audio(self) -> None:
        """The recording ended: the final comes now; audio after this starts a new recording."""
        if self._stt is not None:
            self._speech_end_at = self._speech_end_at or time.monotonic()
            self._stt.close()
            listen, self._listen = self._listen, None
            if listen is not None:
                listen.add_event("end_of_audio", {"audio_bytes": self._audio_bytes})
            if self._stt_task is not None:
                with attached(trace.set_span_in_context(listen) if listen else None):
                    self._watchdogs.add(asyncio.create_task(self._final_deadline(self._stt, self._stt_task)))
            self._stt = None
            self._audio_bytes = 0

    async def _final_deadline(self, stream: ReplayableStream, task: asyncio.Task[None]) -> None:
        """Every utterance ends: no final within the STT deadline fails the turn instead of hanging."""
        try:
            await asyncio.wait_for(asyncio.shield(task), self.deps.settings.stt_timeout_seconds)
        except asyncio.TimeoutError:
            stream.cancel()
            task.cancel()
            message = f"no transcript within {self.deps.settings.stt_timeout_seconds:g} s"
            self._error(grpc.StatusCode.DEADLINE_EXCEEDED, message, common_pb2.STAGE_STT,
                        self._pending.turn_id if self._pending else "")
            if self._pending:
                self._fail_pending(message)
        except Exception:  # noqa: BLE001 - the task reports its own errors
            pass

    def _on_text(self, text: str, traceparent: str = "") -> None:
        text = text.strip()
        parent, links = self._turn_parent(traceparent)
        # A refused text names the client's trace, so the client can close its turn span.
        refused_trace = trace_id_of(trace.get_current_span(parent))
        if not text:
            self._error(grpc.StatusCode.INVALID_ARGUMENT, "empty text", common_pb2.STAGE_INPUT, trace_id=refused_trace)
        elif len(text) > self.deps.settings.max_text_chars:
            self._error(grpc.StatusCode.INVALID_ARGUMENT,
                        f"text is {len(text)} characters; the limit is {self.deps.settings.max_text_chars}",
                        common_pb2.STAGE_INPUT, trace_id=refused_trace)
        elif self._running:
            self._error(grpc.StatusCode.FAILED_PRECONDITION, "a turn is running; send interrupt first",
                        common_pb2.STAGE_INPUT, trace_id=refused_trace)
        else:
            span = turn_span(parent, links)
            turn = self._new_turn("text", trace_id_of(span))
            self._start(turn, UserInput(text=text, source="text", language=self.config.options.language_code), span)

    # -- transcription -------------------------------------------------------------------------
    async def _transcribe(self, stream: ReplayableStream, listen: Span) -> None:
        try:
            async for reply in stream.responses():
                kind = reply.WhichOneof("response")
                if kind == "event" and reply.event.type == stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED:
                    listen.add_event("speech_started", {"offset_seconds": reply.event.offset_seconds})
                    await self._on_speech_started()
                elif kind == "event" and reply.event.type == stt_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE:
                    listen.add_event("end_of_utterance", {"offset_seconds": reply.event.offset_seconds})
                    self._speech_end_at = self._speech_end_at or time.monotonic()
                elif kind == "result":
                    if reply.result.is_final:
                        listen.add_event("final", {"stt.model": reply.model,
                                                   "stt.latency_seconds": reply.result.latency_seconds})
                    await self._on_result(reply.result, reply.model)
                elif kind == "error":
                    self._event(self._pending.turn_id if self._pending else "", error=reply.error)
        except StageError as exc:
            code = exc.code if exc.is_input_error else grpc.StatusCode.UNAVAILABLE
            message = exc.message if exc.is_input_error else f"speech recognition unavailable: {exc.message}"
            self._error(code, message, common_pb2.STAGE_STT, self._pending.turn_id if self._pending else "",
                        trace_id=trace_id_of(listen))
            listen.set_status(Status(StatusCode.ERROR, message[:300]))
            if self._pending:
                self._fail_pending(message)
        finally:
            listen.end()
            if self._listen is listen:
                self._listen = None
            if self._stt is stream:
                self._stt = None
                self._audio_bytes = 0

    def _new_turn(self, source: str, trace_id: str = "") -> assistant_pb2.Turn:
        """A turn and its `turn_started` event; its trace is `trace_id` or the current one."""
        turn = assistant_pb2.Turn(turn_id=uuid.uuid4().hex, conversation_id=self.conversation_id,
                                  trace_id=trace_id or current_trace_id())
        self._event(turn.turn_id, trace_id=turn.trace_id, turn_started=assistant_pb2.TurnStarted(input=source))
        return turn

    async def _on_speech_started(self) -> None:
        if self._running:
            trace.get_current_span().add_event("barge-in")
            await self._interrupt()  # barge-in: the user talks over the answer
        if self._pending is None:
            self._pending = self._new_turn("audio")
            self._speech_end_at = 0.0
            self._event(self._pending.turn_id, speech_started=assistant_pb2.UserSpeechStarted())

    async def _on_result(self, result: stt_pb2.StreamingRecognitionResult, model: str) -> None:
        if self._pending is None:
            self._pending = self._new_turn("audio")
        turn, transcript = self._pending, result.transcript
        self._event(turn.turn_id, transcript=assistant_pb2.TranscriptUpdate(
            text=transcript.text, is_final=result.is_final, language_code=transcript.language_code,
            confidence=transcript.confidence))
        if not result.is_final:
            return
        self._pending = None
        spoken_at = self._speech_end_at or time.monotonic()
        self._speech_end_at = 0.0
        if self._running:
            await self._interrupt()
        self._start(turn, UserInput(
            text=transcript.text, source="audio", language=transcript.language_code,
            confidence=transcript.confidence, no_speech=transcript.no_speech,
            stt_seconds=result.latency_seconds, stt_model=model, spoken_at=spoken_at), turn_span())

    def _fail_pending(self, message: str) -> None:
        turn, self._pending = self._pending, None
        assert turn is not None
        turn.outcome, turn.error_message = assistant_pb2.TURN_OUTCOME_FAILED, message
        self._event(turn.turn_id, trace_id=turn.trace_id, turn_failed=assistant_pb2.TurnFailed(
            turn=turn, stage=common_pb2.STAGE_STT, message=message))
        self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_TURN_FAILED, turn, text=message, with_turn=True)

    # -- turns -----------------------------------------------------------------------------------
    def _start(self, turn: assistant_pb2.Turn, user: UserInput, span: Span) -> None:
        if not self.locks.acquire(self.conversation_id, turn.turn_id):
            message = "another turn is running in this conversation"
            self._error(grpc.StatusCode.ABORTED, message, common_pb2.STAGE_INPUT, turn.turn_id, turn.trace_id)
            span.set_status(Status(StatusCode.ERROR, message))
            span.end()
            return
        runner = TurnRunner(self.deps, turn, self.config.options, self.emit)
        runner.record_on_emit = False  # the writer loop in run() marks what it hands out
        self._runners[turn.turn_id] = runner
        self._running_turn = turn
        self._running = asyncio.create_task(self._run_turn(runner, user, span))

    async def _run_turn(self, runner: TurnRunner, user: UserInput, span: Span) -> assistant_pb2.Turn:
        try:
            return await runner.run(user, span)
        finally:
            self._runners.pop(runner.turn.turn_id, None)
            self.locks.release(self.conversation_id, runner.turn.turn_id)
            if self._running is asyncio.current_task():
                self._running, self._running_turn = None, None

    async def _interrupt(self) -> None:
        task, turn = self._running, self._running_turn
        if task is None or turn is None:
            return
        self._dead_turns.add(turn.turn_id)
        task.cancel()
        finished = await asyncio.gather(task, return_exceptions=True)
        result = finished[0]
        if isinstance(result, assistant_pb2.Turn) and result.outcome == assistant_pb2.TURN_OUTCOME_INTERRUPTED:
            self._event(result.turn_id, trace_id=result.trace_id,
                        turn_interrupted=assistant_pb2.TurnCompleted(turn=result))

    async def _shutdown(self) -> None:
        if self._stt is not None:
            self._stt.cancel()
        for task in (self._stt_task, self._running, *self._watchdogs):
            if task and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
