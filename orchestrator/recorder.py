"""Every side effect of a turn, from one place: the client, NATS, metrics, the store, the span, the log.

A turn starts when its handle is made (speech started, text received, ProcessTurn): the
client's `turn_started` and NATS `turn_started` go out together. It ends once, in `ended`,
whatever ended it (completed, no speech, failed at any stage, interrupted, its conversation
deleted), and the ending reaches every channel the same way, so the paths cannot drift.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from orchestrator.conversations import Conversations
from orchestrator.events import TurnEvents
from voicebus.registry import ServiceRegistry
from orchestrator.settings import OrchestratorSettings
from orchestrator.store import ConversationStore, StoreUnavailable
from orchestrator.turn import TurnHandle
from voicebus.logs import conversation_id_var
from voicebus.metrics import FALLBACKS, STAGE_SECONDS, TURNS
from voicebus.names import label
from voicebus.v1 import assistant_pb2, common_pb2, events_pb2

log = logging.getLogger(__name__)

END_EVENTS = {assistant_pb2.TURN_OUTCOME_FAILED: events_pb2.TURN_EVENT_TYPE_TURN_FAILED,
              assistant_pb2.TURN_OUTCOME_INTERRUPTED: events_pb2.TURN_EVENT_TYPE_TURN_INTERRUPTED}


@dataclass
class Deps:
    """What every turn needs; built once per process."""

    settings: OrchestratorSettings
    store: ConversationStore
    registry: ServiceRegistry
    events: TurnEvents
    conversations: Conversations


class TurnRecorder:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def started(self, handle: TurnHandle) -> None:
        with trace.use_span(handle.span, end_on_exit=False):
            handle.span.set_attributes({"voicebus.conversation_id": handle.turn.conversation_id,
                                        "voicebus.turn_id": handle.turn_id, "voicebus.input": handle.source})
            handle.send(turn_started=assistant_pb2.TurnStarted(input=handle.source))
            self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_TURN_STARTED, handle.turn, text=handle.source)

    async def words_known(self, handle: TurnHandle, seed: list | None = None) -> None:
        """The user's words are known: the turn is stored now, so a crash keeps the question."""
        turn = handle.turn
        conversation_id_var.set(turn.conversation_id)
        await self.deps.store.start_turn(turn, seed)
        handle.stored = True
        self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_TRANSCRIPT_FINAL, turn, text=turn.user_text)

    def note_fallback(self, handle: TurnHandle, text: str) -> None:
        handle.turn.providers.fallbacks.append(text)

    def degraded(self, handle: TurnHandle, stage: int, message: str) -> None:
        degraded = assistant_pb2.StageDegraded(stage=stage, message=message)
        handle.degraded.append(degraded)
        stage_name = label(common_pb2.Stage, stage)
        handle.turn.providers.fallbacks.append(f"{stage_name}: {message}")
        handle.send(degraded=degraded)
        FALLBACKS.labels(stage=stage_name, kind="degraded").inc()
        handle.span.add_event("degraded", {"stage": stage_name, "message": message[:300]})
        self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_STAGE_DEGRADED, handle.turn, text=message, stage=stage)

    def first_audio(self, handle: TurnHandle) -> None:
        assert handle.user is not None
        handle.first_audio_at = time.monotonic()
        handle.turn.timings.first_audio_seconds = handle.first_audio_at - handle.user.spoken_at
        self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_FIRST_AUDIO_SENT, handle.turn)

    def response_completed(self, handle: TurnHandle) -> None:
        self.deps.events.publish(events_pb2.TURN_EVENT_TYPE_RESPONSE_COMPLETED, handle.turn,
                                 text="".join(handle.sent_text))

    async def ended(self, handle: TurnHandle) -> None:
        """The one ending of a turn. Never raises: storage trouble is logged, the client still hears."""
        turn, user, span = handle.turn, handle.user, handle.span
        turn.assistant_text = handle.heard_text()
        if user is not None:
            turn.timings.total_seconds = time.monotonic() - user.spoken_at
        outcome = label(assistant_pb2.TurnOutcome, turn.outcome)
        self._measure(turn, outcome)
        log.info("turn finished", extra={"fields": {  # ids, outcome and timings: texts stay in the store
            "turn_id": turn.turn_id, "conversation_id": turn.conversation_id, "outcome": outcome,
            "input": handle.source, "stage": label(common_pb2.Stage, handle.failed_stage),
            "llm_provider": turn.providers.llm_provider, "tts_engine": turn.providers.tts_engine,
            "fallbacks": len(turn.providers.fallbacks),
            "first_audio_seconds": round(turn.timings.first_audio_seconds, 3),
            "total_seconds": round(turn.timings.total_seconds, 3)}})
        if not handle.deleted:
            await self._store(handle)
            self.deps.events.publish(END_EVENTS.get(turn.outcome, events_pb2.TURN_EVENT_TYPE_TURN_COMPLETED), turn,
                                     text=turn.error_message, stage=handle.failed_stage, with_turn=True)
        await self.deps.conversations.release(handle)
        if turn.outcome == assistant_pb2.TURN_OUTCOME_FAILED:
            handle.send(turn_failed=assistant_pb2.TurnFailed(turn=turn, stage=handle.failed_stage,
                                                             message=turn.error_message))
            span.set_status(Status(StatusCode.ERROR, turn.error_message[:300]))
        elif turn.outcome == assistant_pb2.TURN_OUTCOME_INTERRUPTED:
            handle.send(turn_interrupted=assistant_pb2.TurnCompleted(turn=turn))
        else:
            handle.send(turn_completed=assistant_pb2.TurnCompleted(turn=turn))
        span.set_attribute("voicebus.outcome", outcome)
        span.end()

    @staticmethod
    def _measure(turn: assistant_pb2.Turn, outcome: str) -> None:
        TURNS.labels(outcome=outcome).inc()
        t = turn.timings
        for stage, seconds in (("stt_final", t.stt_seconds), ("llm_first_token", t.llm_first_token_seconds),
                               ("tts_first_chunk", t.tts_first_chunk_seconds), ("first_audio", t.first_audio_seconds),
                               ("turn", t.total_seconds)):
            if seconds:  # 0 = the stage did not run in this turn
                STAGE_SECONDS.labels(stage=stage).observe(seconds)

    async def _store(self, handle: TurnHandle) -> None:
        try:
            if not handle.stored:  # ended before its words were known (STT failed): kept as a failed turn
                await self.deps.store.start_turn(handle.turn)
                handle.stored = True
            await self.deps.store.finish_turn(handle.turn)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as exc:  # the client still gets the answer (or the turn's failure)
            log.warning("could not store the finished turn", extra={"fields": {
                "turn_id": handle.turn_id, "error": exc.message}})
        except Exception:  # noqa: BLE001 - storage trouble is logged, the client still gets the answer
            log.exception("could not store the finished turn")
