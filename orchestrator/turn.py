"""One turn: the user's words in, a spoken answer out, the turn stored and announced.

The LLM's deltas go to the client and, at the same time, into one TTS text stream that
speaks each sentence as soon as it is complete, so the first audio plays while the LLM
is still writing. Cancelling the task running `TurnRunner.run` is the barge-in: the
in-flight LLM and TTS calls are cancelled and the turn is stored with what was delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from orchestrator.clients import StageError, llm_generate, tts_stream
from orchestrator.events import TurnEvents
from orchestrator.phrases import APOLOGY, PLEASE_REPEAT, phrase
from orchestrator.registry import ServiceRegistry
from orchestrator.settings import OrchestratorSettings
from orchestrator.store import ConversationStore
from voicebus.logs import conversation_id_var
from voicebus.metrics import FALLBACKS, STAGE_SECONDS, TURNS
from voicebus.telemetry import current_trace_id, tracer
from voicebus.text import SentenceSplitter
from voicebus.v1 import assistant_pb2, audio_pb2, common_pb2, events_pb2, llm_pb2, tts_pb2

log = logging.getLogger(__name__)
_tracer = tracer("voicebus.orchestrator")
Emit = Callable[[assistant_pb2.ConverseResponse], None]


@dataclass
class Deps:
    """What every turn needs; built once per process."""

    settings: OrchestratorSettings
    store: ConversationStore
    registry: ServiceRegistry
    events: TurnEvents


@dataclass
class UserInput:
    text: str
    source: str  # "audio" or "text"
    language: str = ""
    confidence: float = 1.0
    no_speech: bool = False
    stt_seconds: float = 0.0
    stt_model: str = ""
    # When the user stopped speaking (or the text arrived): the clock for first-audio latency.
    spoken_at: float = field(default_factory=time.monotonic)


class TurnRunner:
    def __init__(self, deps: Deps, turn: assistant_pb2.Turn, options: assistant_pb2.TurnOptions, emit: Emit) -> None:
        self.deps, self.turn, self.options, self._emit = deps, turn, options, emit
        self.sent_text: list[str] = []  # response deltas sent to the client
        # sentence index -> text, for sentences whose audio reached the client: what a barge-in
        # leaves on record. A Converse stream marks them as its writer hands them out
        # (record_on_emit=False); otherwise emitting is delivering.
        self.spoken: dict[int, str] = {}
        self.record_on_emit = True
        self.degraded: list[assistant_pb2.StageDegraded] = []
        self._first_audio_at = 0.0

    # -- helpers -----------------------------------------------------------------------------
    def emit(self, **event: object) -> None:
        response = assistant_pb2.ConverseResponse(conversation_id=self.turn.conversation_id,
                                                  turn_id=self.turn.turn_id, trace_id=self.turn.trace_id,
                                                  **event)  # type: ignore[arg-type]
        if self.record_on_emit:
            self.delivered(response)
        self._emit(response)

    def delivered(self, event: assistant_pb2.ConverseResponse) -> None:
        """The client got `event`: a sentence's audio counts as heard."""
        if event.WhichOneof("event") == "audio" and event.audio.text:
            self.spoken.setdefault(event.audio.sentence_index, event.audio.text)

    def _degrade(self, stage: int, message: str) -> None:
        degraded = assistant_pb2.StageDegraded(stage=stage, message=message)
        self.degraded.append(degraded)
        self.turn.providers.fallbacks.append(f"{common_pb2.Stage.Name(stage).removeprefix('STAGE_').lower()}: "
                                             f"{message}")
        self.emit(degraded=degraded)
        stage_name = common_pb2.Stage.Name(stage).removeprefix("STAGE_").lower()
        FALLBACKS.labels(stage=stage_name, kind="degraded").inc()
        trace.get_current_span().add_event("degraded", {"stage": stage_name, "message": message[:300]})
        self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_STAGE_DEGRADED, self.turn, text=message, stage=stage)

    def _tts_config(self, language: str) -> tts_pb2.SynthesisConfig:
        fmt = self.options.output_format
        return tts_pb2.SynthesisConfig(engine=self.options.tts_engine, voice=self.options.voice,
                                       language_code=language.split("-")[0] or "en",
                                       encoding=fmt.encoding or audio_pb2.AUDIO_ENCODING_PCM16,
                                       sample_rate_hz=fmt.sample_rate_hz)

    def _send_audio(self, sentence: tts_pb2.SpokenSentence, spoken_at: float) -> None:
        if not self._first_audio_at:
            self._first_audio_at = time.monotonic()
            self.turn.timings.first_audio_seconds = self._first_audio_at - spoken_at
            self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_FIRST_AUDIO_SENT, self.turn)
        self.turn.providers.tts_engine = sentence.engine
        self.turn.providers.tts_voice = sentence.voice
        self.emit(audio=assistant_pb2.AudioOutput(chunk=sentence.audio, sentence_index=sentence.sentence_index,
                                                  text=sentence.text))

    async def _speak(self, text: str, language: str, spoken_at: float) -> None:
        """Speak a fixed phrase (please-repeat, apology); without TTS, the text is degraded output."""
        self.emit(response_delta=assistant_pb2.ResponseDelta(text=text))
        self.sent_text.append(text)
        if not self.options.synthesize_audio:
            return
        stream = tts_stream(self.deps.registry, self._tts_config(language), self.turn.turn_id,
                            self.deps.settings.tts_timeout_seconds)
        stream.send(tts_pb2.StreamingSynthesizeRequest(text=text))
        stream.close()
        try:
            async for reply in stream.responses():
                self._send_audio(reply.sentence, spoken_at)
        except StageError as exc:
            self._degrade(common_pb2.STAGE_TTS, f"no speech, text only ({exc.message})")

    # -- the turn ----------------------------------------------------------------------------
    async def run(self, user: UserInput, span: Span | None = None) -> assistant_pb2.Turn:
        """Run the turn to its end; never raises (except for input errors before anything is stored).

        `span`: the turn's span when the caller started it already (a Converse stream starts it
        in the turn's own trace); by default a child of the current span."""
        span = span or turn_span()
        with trace.use_span(span, end_on_exit=True):
            span.set_attributes({"voicebus.conversation_id": self.turn.conversation_id,
                                 "voicebus.turn_id": self.turn.turn_id, "voicebus.input": user.source})
            self.turn.trace_id = current_trace_id()
            conversation_id_var.set(self.turn.conversation_id)
            self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_TURN_STARTED, self.turn, text=user.source)
            try:
                await self._run(user)
            except asyncio.CancelledError:
                span.add_event("barge-in", {"spoken_sentences": len(self.spoken)})
                self.turn.outcome = assistant_pb2.TURN_OUTCOME_INTERRUPTED
                self.turn.interrupted = True
            except Exception as exc:  # noqa: BLE001 - a turn always ends stored, never half-done
                log.exception("turn failed unexpectedly")
                self.turn.outcome = assistant_pb2.TURN_OUTCOME_FAILED
                self.turn.error_message = f"internal error: {exc.__class__.__name__}"
            await asyncio.shield(self._finish(user))
            outcome = assistant_pb2.TurnOutcome.Name(self.turn.outcome).removeprefix("TURN_OUTCOME_").lower()
            span.set_attribute("voicebus.outcome", outcome)
            if self.turn.outcome == assistant_pb2.TURN_OUTCOME_FAILED:
                span.set_status(Status(StatusCode.ERROR, self.turn.error_message[:300]))
            return self.turn

    async def _run(self, user: UserInput) -> None:
        turn, settings = self.turn, self.deps.settings
        turn.user_text = user.text
        turn.language_code = user.language or self.options.language_code or "en"
        turn.timings.stt_seconds = user.stt_seconds
        turn.providers.stt_model = user.stt_model
        await self.deps.store.start_turn(turn)
        self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_TRANSCRIPT_FINAL, turn, text=turn.user_text)

        if user.source == "audio" and (user.no_speech or not user.text.strip()
                                       or user.confidence < settings.min_transcript_confidence):
            turn.outcome = assistant_pb2.TURN_OUTCOME_NO_SPEECH
            await self._speak(phrase(PLEASE_REPEAT, turn.language_code), turn.language_code, user.spoken_at)
            return

        history = await self.deps.store.history(turn.conversation_id, settings.history_turns)
        request = llm_pb2.GenerateRequest(
            request_id=turn.turn_id, language_code=turn.language_code,
            messages=[*history, common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=user.text)])
        try:
            await self._answer(request, user.spoken_at)
            turn.outcome = assistant_pb2.TURN_OUTCOME_COMPLETED
        except StageError as exc:
            turn.outcome = assistant_pb2.TURN_OUTCOME_FAILED
            turn.error_message = f"{exc.service}: {exc.message}"
            if not self.sent_text:  # nothing said yet: apologise aloud
                self.turn.providers.fallbacks.append(f"llm: failed ({exc.message[:200]})")
                await self._speak(phrase(APOLOGY, turn.language_code), turn.language_code, user.spoken_at)

    async def _answer(self, request: llm_pb2.GenerateRequest, spoken_at: float) -> None:
        turn, settings = self.turn, self.deps.settings
        speak = self.options.synthesize_audio
        tts = tts_stream(self.deps.registry, self._tts_config(turn.language_code), turn.turn_id,
                         settings.tts_timeout_seconds) if speak else None
        first_piece_at = 0.0
        splitter = SentenceSplitter()

        async def play() -> None:
            assert tts is not None
            try:
                async for reply in tts.responses():
                    if not self._first_audio_at and first_piece_at:
                        turn.timings.tts_first_chunk_seconds = time.monotonic() - first_piece_at
                    self._send_audio(reply.sentence, spoken_at)
            except StageError as exc:
                self._degrade(common_pb2.STAGE_TTS, f"no speech, text only ({exc.message[:200]})")

        player = asyncio.create_task(play()) if tts else None
        started = time.monotonic()
        try:
            async for reply in llm_generate(self.deps.registry, request, settings.llm_timeout_seconds):
                if reply.WhichOneof("response") == "delta":
                    text = reply.delta.text
                    if not self.sent_text:
                        turn.timings.llm_first_token_seconds = time.monotonic() - started
                    self.sent_text.append(text)
                    self.emit(response_delta=assistant_pb2.ResponseDelta(text=text))
                    if tts:
                        if not first_piece_at and splitter.push(text):
                            first_piece_at = time.monotonic()
                        tts.send(tts_pb2.StreamingSynthesizeRequest(text=text))
                elif reply.WhichOneof("response") == "done":
                    done = reply.done
                    turn.providers.llm_provider, turn.providers.llm_model = done.provider, done.model
                    turn.providers.fallbacks.extend(f"llm: {f.provider} skipped ({f.reason})" for f in done.fallbacks)
            turn.timings.llm_seconds = time.monotonic() - started
            self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_RESPONSE_COMPLETED, turn, text="".join(self.sent_text))
            if tts and player and self.sent_text:
                if not first_piece_at:
                    first_piece_at = time.monotonic()
                tts.close()
                await player
            # With nothing to say, the idle TTS call is cancelled below.
        finally:
            if player and not player.done():
                player.cancel()
                if tts:
                    tts.cancel()
                await asyncio.gather(player, return_exceptions=True)

    async def _finish(self, user: UserInput) -> None:
        turn = self.turn
        if turn.interrupted and self.options.synthesize_audio:
            # What the user actually heard: the sentences whose audio went out.
            turn.assistant_text = " ".join(self.spoken[i] for i in sorted(self.spoken))
        else:
            turn.assistant_text = "".join(self.sent_text).strip()
        turn.timings.total_seconds = time.monotonic() - user.spoken_at
        outcome = assistant_pb2.TurnOutcome.Name(turn.outcome).removeprefix("TURN_OUTCOME_").lower()
        TURNS.labels(outcome=outcome).inc()
        t = turn.timings
        for stage, seconds in (("stt_final", t.stt_seconds), ("llm_first_token", t.llm_first_token_seconds),
                               ("tts_first_chunk", t.tts_first_chunk_seconds), ("first_audio", t.first_audio_seconds),
                               ("turn", t.total_seconds)):
            if seconds:  # 0 = the stage did not run in this turn
                STAGE_SECONDS.labels(stage=stage).observe(seconds)
        # Ids, outcome and timings only: the texts stay in the store, never in a log line.
        log.info("turn finished", extra={"fields": {
            "turn_id": turn.turn_id, "outcome": outcome, "input": user.source,
            "llm_provider": turn.providers.llm_provider, "tts_engine": turn.providers.tts_engine,
            "fallbacks": len(turn.providers.fallbacks), "first_audio_seconds": round(t.first_audio_seconds, 3),
            "total_seconds": round(t.total_seconds, 3)}})
        try:
            await self.deps.store.finish_turn(turn)
        except Exception:  # noqa: BLE001 - storage trouble is logged, the client still gets the answer
            log.exception("could not store the finished turn")
        kinds = {assistant_pb2.TURN_OUTCOME_FAILED: events_pb2.TURN_EVENT_TYPE_TURN_FAILED,
                 assistant_pb2.TURN_OUTCOME_INTERRUPTED: events_pb2.TURN_EVENT_TYPE_TURN_INTERRUPTED}
        self.deps.events.publish(kinds.get(turn.outcome, events_pb2.TURN_EVENT_TYPE_TURN_COMPLETED), turn,
                                 text=turn.error_message, with_turn=True)
        if turn.outcome == assistant_pb2.TURN_OUTCOME_FAILED:
            self.emit(turn_failed=assistant_pb2.TurnFailed(turn=turn, stage=common_pb2.STAGE_LLM,
                                                           message=turn.error_message))
        elif turn.outcome != assistant_pb2.TURN_OUTCOME_INTERRUPTED:
            self.emit(turn_completed=assistant_pb2.TurnCompleted(turn=turn))


def turn_span(parent: object = None, links: list[trace.Link] | None = None) -> Span:
    """A turn's span, not yet current: a child of `parent` (an OTel context; None = the current one)."""
    return _tracer.start_span("turn", context=parent, links=links)  # type: ignore[arg-type]
