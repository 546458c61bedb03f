"""A `Converse` stream: audio, text and control messages in; turn events out.

The session moves bytes and decides when turns begin; each turn is owned by its
`TurnHandle`. Three tasks: the reader (client messages), a listener per recording (STT
replies), and the writer (`run`, which hands events to gRPC). Every event waits in one
outbox; the writer asks the event's turn whether it may still go (after a barge-in only the
turn's end may) and tells the turn what it delivered.

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

from orchestrator import intake
from orchestrator.clients import StageError
from orchestrator.conversations import DRAINING
from orchestrator.intake import InputError
from orchestrator.listen import Recording
from orchestrator.overlap import Overlap
from orchestrator.pipeline import run_turn
from orchestrator.playout import Playout
from orchestrator.recorder import TurnRecorder
from orchestrator.store import StoreUnavailable
from orchestrator.turn import TurnHandle, UserInput
from voicebus.metrics import ACTIVE_STREAMS
from voicebus.telemetry import attached, context_from_traceparent, trace_id_of, tracer
from voicebus.v1 import assistant_pb2, common_pb2, stt_pb2

log = logging.getLogger(__name__)
Event = stt_pb2.SpeechEventType


class StreamEnd(Exception):
    """Ends the Converse stream with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


Outgoing = tuple[TurnHandle | None, assistant_pb2.ConverseResponse | StreamEnd | None]


class ConverseSession:
    def __init__(self, recorder: TurnRecorder) -> None:
        self.recorder, self.deps = recorder, recorder.deps
        self.config = assistant_pb2.ConverseConfig()
        self.conversation_id = ""
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.current: TurnHandle | None = None  # the turn being heard or answered: one at a time
        self._recording: Recording | None = None
        self._listener: asyncio.Task[None] | None = None
        self._speech_end_at = 0.0
        self._refused_utterance = False  # its speech started while the conversation was busy elsewhere
        self._overlap: Overlap | None = None  # an utterance begun over an answer, not yet judged
        self._stream_links: list[Link] = []
        self._drain_wait: asyncio.Task[None] | None = None

    # -- output ------------------------------------------------------------------------------
    def put(self, handle: TurnHandle | None, event: assistant_pb2.ConverseResponse) -> None:
        self._outbox.put_nowait((handle, event))

    def _event(self, **fields: object) -> None:
        self.put(None, assistant_pb2.ConverseResponse(conversation_id=self.conversation_id,
                                                      **fields))  # type: ignore[arg-type]

    def _error(self, error: InputError | StageError, stage: int, turn: TurnHandle | None = None,
               trace_id: str = "") -> None:
        event = assistant_pb2.ConverseResponse(
            conversation_id=self.conversation_id, turn_id=turn.turn_id if turn else "",
            trace_id=turn.turn.trace_id if turn else trace_id,
            error=common_pb2.StreamError(code=error.code.value[0], message=error.message, stage=stage,
                                         retryable=error.code in (grpc.StatusCode.UNAVAILABLE,
                                                                  grpc.StatusCode.RESOURCE_EXHAUSTED)))
        self.put(turn, event)

    def _end(self, code: grpc.StatusCode, message: str) -> None:
        self._outbox.put_nowait((None, StreamEnd(code, message)))

    async def run(self, requests: AsyncIterator[assistant_pb2.ConverseRequest]
                  ) -> AsyncIterator[assistant_pb2.ConverseResponse | StreamEnd]:
        stream_span = trace.get_current_span().get_span_context()  # the Converse call's server span
        self._stream_links = [Link(stream_span)] if stream_span.is_valid else []
        reader = asyncio.create_task(self._read(requests))
        ACTIVE_STREAMS.inc()
        try:
            while True:
                handle, item = await self._outbox.get()
                if item is None or isinstance(item, StreamEnd):
                    if item is not None:
                        yield item
                    return
                if handle is not None and not handle.deliverable(item):
                    continue  # queued before the barge-in: never delivered
                yield item
                if handle is not None:
                    handle.on_delivered(item)
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
                    self._on_audio(request.audio, request.traceparent)
                elif kind == "end_of_audio":
                    self._end_recording()
                elif kind == "text":
                    await self._on_text(request.text, request.traceparent)
                elif kind == "interrupt":
                    await self._interrupt_request()
                elif kind == "playback":
                    self._on_playback(request.playback)
                elif kind == "config":
                    raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                                     "config was already sent; send it only once, first")
                else:
                    raise InputError(grpc.StatusCode.INVALID_ARGUMENT,
                                     "empty message: set audio, text, interrupt, end_of_audio or playback")
            # The client half-closed: finish what is under way, then end the stream.
            self._end_recording()
            if self._listener:
                await self._listener
            if self.current:
                await self.current.done.wait()
            self._outbox.put_nowait((None, None))
        except (InputError, StoreUnavailable) as bad:
            self._end(bad.code, bad.message)
        except Exception as exc:  # noqa: BLE001 - the client gets a status, not a hang
            log.exception("converse stream failed")
            self._end(grpc.StatusCode.INTERNAL, f"internal error: {exc.__class__.__name__}")

    async def _open(self, requests: AsyncIterator[assistant_pb2.ConverseRequest]) -> None:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("request") != "config":
            raise InputError(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a config")
        self.config = first.config
        intake.check_converse_config(self.config)
        if self.deps.conversations.draining:
            raise InputError(grpc.StatusCode.UNAVAILABLE, DRAINING)
        if self.config.conversation_id:
            if not await self.deps.store.exists(self.config.conversation_id):
                raise InputError(grpc.StatusCode.NOT_FOUND, f"no conversation {self.config.conversation_id!r}")
            self.conversation_id, created = self.config.conversation_id, False
        else:  # stored with its first turn
            self.conversation_id, created = uuid.uuid4().hex, True
        self.deps.conversations.watch(self.conversation_id, self._on_deleted, self._on_drain)
        count = await self.deps.store.turn_count(self.conversation_id)
        self._event(conversation_opened=assistant_pb2.ConversationOpened(created=created, turn_count=count))

    def _on_deleted(self) -> None:
        """Another call deleted this conversation (its running turn has ended unstored)."""
        self._end(grpc.StatusCode.NOT_FOUND, f"conversation {self.conversation_id!r} was deleted")

    def _on_drain(self) -> None:
        """This orchestrator is shutting down: the stream ends with UNAVAILABLE (the client moves
        to another orchestrator) as soon as its running turn has ended, at once if none runs."""
        current = self.current
        if current is None or current.done.is_set():
            self._end(grpc.StatusCode.UNAVAILABLE, DRAINING)
            return

        async def after_the_turn() -> None:
            await current.done.wait()
            self._end(grpc.StatusCode.UNAVAILABLE, DRAINING)
        self._drain_wait = asyncio.create_task(after_the_turn())

    def _trace_parent(self, traceparent: str) -> tuple[otel_context.Context | None, list[Link]]:
        """Where a turn's (or recording's) trace comes from: the client's traceparent, else a new
        trace linked to the stream's span."""
        parent = context_from_traceparent(traceparent)
        if parent is not None:
            return parent, []
        return otel_context.Context(), self._stream_links

    async def _new_turn(self, source: str, parent: object = None,
                        links: list[Link] | None = None) -> TurnHandle | None:
        """A turn's handle once the conversation is ours; None (and an ABORTED error) when another
        stream or call is running a turn in it, here or in another orchestrator. None, and the
        stream ends UNAVAILABLE, when this orchestrator is draining."""
        if self.deps.conversations.draining:
            self._end(grpc.StatusCode.UNAVAILABLE, DRAINING)
            return None
        turn_id = uuid.uuid4().hex
        if not await self.deps.conversations.claim(self.conversation_id, turn_id):
            trace_id = trace_id_of(trace.get_current_span(parent)) if parent is not None else ""  # type: ignore[arg-type]
            self._error(InputError(grpc.StatusCode.ABORTED, "another turn is running in this conversation"),
                        common_pb2.STAGE_INPUT, trace_id=trace_id)
            return None
        handle = TurnHandle(self.recorder, self, self.conversation_id, source, self.config.options, parent, links,
                            turn_id=turn_id)
        if self.config.realtime_playback:
            handle.playout = Playout()
        self.deps.conversations.hold(handle)
        self.current = handle
        handle.start(run_turn)
        return handle

    async def _on_text(self, text: str, traceparent: str = "") -> None:
        parent, links = self._trace_parent(traceparent)
        refused_trace = trace_id_of(trace.get_current_span(parent))  # so the client can close its turn span
        try:
            text = intake.check_text(text, self.deps.settings)
            if self.current is not None and not self.current.done.is_set() and not self.current.playing_out:
                raise InputError(grpc.StatusCode.FAILED_PRECONDITION, "a turn is running; send interrupt first")
        except InputError as bad:
            self._error(bad, common_pb2.STAGE_INPUT, trace_id=refused_trace)
            return
        if self._overlap is not None:  # the text takes the turn; the speech under way is dropped
            await self._overlap.close()
        await self._interrupt()  # typed over an answer that is still playing: a barge-in
        if handle := await self._new_turn("text", parent, links):
            handle.heard(UserInput(text=text, source="text", language=self.config.options.language_code))

    def _on_playback(self, report: assistant_pb2.PlaybackReport) -> None:
        """The client says how much of the playing turn it has played: the clock follows it."""
        current = self.current
        if current is not None and current.playout is not None and report.turn_id == current.turn_id \
                and not current.done.is_set():
            current.playout.report(report.played_ms / 1000)

    async def _interrupt_request(self) -> None:
        """The client's `interrupt`: the answer stops; speech being judged over it is a turn."""
        if self._overlap is not None and self._overlap.judging:
            await self._overlap.barge_in()
        else:
            await self._interrupt()

    async def _interrupt(self) -> None:
        """Barge-in: the answer stops now; a turn still being heard goes on."""
        if self.current is not None and not self.current.listening and not self.current.done.is_set():
            if self.current.span.is_recording():  # it may be ending already
                self.current.span.add_event("barge-in")
            await self.current.interrupt()

    # -- audio -------------------------------------------------------------------------------
    def _on_audio(self, data: bytes, traceparent: str = "") -> None:
        if not data:
            return
        if self._recording is None:
            settings, fmt = self.deps.settings, self.config.input_format
            config = stt_pb2.RecognitionConfig(
                encoding=fmt.encoding, sample_rate_hz=fmt.sample_rate_hz,
                # interims always: they tell a barge-in from a backchannel early (sent on only if asked)
                language_code=self.config.options.language_code, interim_results=True,
                end_of_utterance_silence_ms=self.config.end_of_utterance_silence_ms)
            parent, links = self._trace_parent(traceparent)
            listen = tracer("voicebus.orchestrator").start_span(
                "listen", context=parent, links=links, attributes={"voicebus.conversation_id": self.conversation_id})
            self._recording = Recording(self.deps.registry, config, settings.max_audio_bytes,
                                        settings.stt_outage_seconds, settings.stt_timeout_seconds,
                                        note=self._note_failover)
            self._recording.span = listen
            with attached(trace.set_span_in_context(listen)):  # the STT call and the turns heard are its children
                self._listener = asyncio.create_task(self._listen(self._recording, listen))
        self._recording.send(data)

    def _note_failover(self, text: str) -> None:
        if self.current is not None:
            self.recorder.note_fallback(self.current, text)

    def _end_recording(self) -> None:
        """The recording ended: the final comes now; audio after this starts a new recording."""
        if self._recording is not None:
            self._speech_end_at = self._speech_end_at or time.monotonic()
            self._recording.close()
            if self._recording.span is not None and self._recording.span.is_recording():  # STT may have ended it
                self._recording.span.add_event("end_of_audio")
            self._recording = None

    async def _listen(self, recording: Recording, listen: Span) -> None:
        try:
            async for reply in recording.replies(self._on_outage):
                kind = reply.WhichOneof("response")
                if kind == "event" and reply.event.type == Event.SPEECH_EVENT_TYPE_SPEECH_STARTED:
                    listen.add_event("speech_started", {"offset_seconds": reply.event.offset_seconds})
                    await self._on_speech_started()
                elif kind == "event" and reply.event.type == Event.SPEECH_EVENT_TYPE_END_OF_UTTERANCE:
                    listen.add_event("end_of_utterance", {"offset_seconds": reply.event.offset_seconds})
                    self._speech_end_at = self._speech_end_at or time.monotonic()
                    if self._overlap is not None:
                        self._overlap.speech_ended()
                elif kind == "result":
                    if reply.result.is_final:
                        listen.add_event("final", {"stt.model": reply.model,
                                                   "stt.latency_seconds": reply.result.latency_seconds})
                    await self._on_result(reply.result, reply.model)
                elif kind == "error":
                    self.put(self._hearing(), assistant_pb2.ConverseResponse(
                        conversation_id=self.conversation_id, error=reply.error,
                        turn_id=getattr(self._hearing(), "turn_id", "")))
        except StageError as exc:
            if exc.code == grpc.StatusCode.CANCELLED:
                return
            if not exc.is_input_error and exc.code not in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                           grpc.StatusCode.DEADLINE_EXCEEDED):
                exc = StageError("stt", grpc.StatusCode.UNAVAILABLE, f"speech recognition unavailable: {exc.message}")
            listen.set_status(Status(StatusCode.ERROR, exc.message[:300]))
            if self._overlap is not None:  # unjudged speech over the answer: let the answer go on
                self._overlap.let_pass("")
            hearing = self._hearing()
            if hearing is None:  # no turn began: the client still hears why
                self._error(exc, common_pb2.STAGE_STT, trace_id=trace_id_of(listen))
            else:
                hearing.not_heard(exc)
        finally:
            listen.end()
            if self._recording is recording:
                self._recording = None

    def _hearing(self) -> TurnHandle | None:
        """The turn whose words are being transcribed, if any."""
        current = self.current
        return current if current is not None and current.listening and not current.done.is_set() else None

    def _on_outage(self, exc: StageError) -> None:
        """No STT instance answers: said once; the audio is kept and replayed when STT is back."""
        hearing = self._hearing()
        self._error(StageError("stt", exc.code if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                               else grpc.StatusCode.UNAVAILABLE,
                               f"speech recognition unavailable, retrying for up to "
                               f"{self.deps.settings.stt_outage_seconds:g} s: {exc.message[:200]}"),
                    common_pb2.STAGE_STT, hearing)

    async def _on_speech_started(self) -> None:
        current = self.current
        if current is not None and not current.listening and not current.done.is_set():
            # The user talks over the answer: paused now, judged by its words (overlap.py).
            settings = self.deps.settings
            self._overlap = Overlap(current, settings.backchannel_window_ms / 1000, settings.stt_timeout_seconds,
                                    interrupt=self._interrupt, start_turn=self._start_utterance)
            return
        await self._start_utterance()

    async def _start_utterance(self) -> None:
        """Speech began and nothing is being answered: its turn starts now."""
        if self._hearing() is None:
            self._speech_end_at = 0.0
            handle = await self._new_turn("audio")
            self._refused_utterance = handle is None
            if handle is not None:
                handle.send(speech_started=assistant_pb2.UserSpeechStarted())

    async def _on_result(self, result: stt_pb2.StreamingRecognitionResult, model: str) -> None:
        if self._refused_utterance:  # the conversation was busy when this utterance began
            self._refused_utterance = not result.is_final
            return
        if (overlap := self._overlap) is not None:
            if result.is_final:
                self._overlap = None  # the utterance is over
            if not await overlap.judge(result):
                return
            if self._refused_utterance:  # its turn could not start
                self._refused_utterance = not result.is_final
                return
        handle = self._hearing()
        if handle is None:  # a final with no speech event before it (e.g. nobody spoke)
            if self.current is not None and not self.current.done.is_set():
                await self._interrupt()
            handle = await self._new_turn("audio")
            if handle is None:
                return
        transcript = result.transcript
        if result.is_final or self.config.interim_results:
            handle.send(transcript=assistant_pb2.TranscriptUpdate(
                text=transcript.text, is_final=result.is_final, language_code=transcript.language_code,
                confidence=transcript.confidence))
        if result.is_final:
            # The clock of first-audio latency: when the last speech sample reached STT (its latency
            # counts from there), hands-free too; else when the end of the utterance was known.
            now = time.monotonic()
            spoken_at = now - result.latency_seconds if result.latency_seconds > 0 else self._speech_end_at or now
            self._speech_end_at = 0.0
            handle.heard(UserInput(
                text=transcript.text, source="audio", language=transcript.language_code,
                confidence=transcript.confidence, no_speech=transcript.no_speech,
                no_speech_probability=transcript.no_speech_probability, stt_seconds=result.latency_seconds,
                stt_model=model, spoken_at=spoken_at))

    async def _shutdown(self) -> None:
        self.deps.conversations.unwatch(self.conversation_id, self._on_deleted, self._on_drain)
        if self._drain_wait is not None:
            self._drain_wait.cancel()
        if self._overlap is not None:
            await self._overlap.close()
        if self._recording is not None:
            self._recording.cancel()
        if self._listener and not self._listener.done():
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        if self.current is not None and not self.current.done.is_set():
            await self.current.interrupt()
