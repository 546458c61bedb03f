"""A turn's handle: the one owner of a turn from its first sign to its last event.

Made when a turn begins (speech started, text received, ProcessTurn), a `TurnHandle` holds
the `Turn` message, its span, the conversation's lock (taken before it exists) and the task
that does the work. It is the only thing that ends a turn: whoever holds it may
`interrupt()` it (barge-in) or `cancel_deleted()` it; the task then ends it, and every side
effect of the ending leaves from `TurnRecorder.ended`.

What the user got is the handle's to know, not the pipeline's: events go out through a
`Sink`; the sink tells the handle what it really delivered (`on_delivered`), and after an
interrupt nothing more of the turn is deliverable but its end. So a barge-in stores exactly
the sentences whose audio reached the client, not those queued behind them. When the
client plays in real time, the handle also keeps its `Playout` clock: the turn lasts until
the audio has played, and a barge-in stores the words played, not those sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span

from orchestrator.clients import StageError
from orchestrator.playout import Playout
from orchestrator.store import StoreUnavailable
from voicebus.telemetry import trace_id_of, tracer
from voicebus.v1 import assistant_pb2, common_pb2

if TYPE_CHECKING:
    from orchestrator.recorder import TurnRecorder

log = logging.getLogger(__name__)
_tracer = tracer("voicebus.orchestrator")
END_EVENTS = frozenset({"turn_completed", "turn_failed", "turn_interrupted"})


@dataclass
class UserInput:
    text: str
    source: str  # "audio" or "text"
    language: str = ""
    confidence: float = 1.0
    no_speech: bool = False
    no_speech_probability: float = 0.0
    stt_seconds: float = 0.0
    stt_model: str = ""
    # When the user stopped speaking (or the text arrived): the clock for first-audio latency.
    spoken_at: float = field(default_factory=time.monotonic)


class Sink(Protocol):
    """Where a turn's events go: a Converse stream's writer, or ProcessTurn's collector."""

    def put(self, handle: TurnHandle, event: assistant_pb2.ConverseResponse) -> None: ...


class TurnFailure(Exception):
    """Ends a turn as failed at `stage` (the pipeline raises it; StageError says the stage itself)."""

    def __init__(self, stage: int, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.stage, self.code, self.message = stage, code, message


STAGES = {"stt": common_pb2.STAGE_STT, "llm": common_pb2.STAGE_LLM, "tts": common_pb2.STAGE_TTS}


class TurnHandle:
    def __init__(self, recorder: TurnRecorder, sink: Sink, conversation_id: str, source: str,
                 options: assistant_pb2.TurnOptions, parent: object = None,
                 links: list[trace.Link] | None = None, turn_id: str = "") -> None:
        self.recorder, self.sink, self.options, self.source = recorder, sink, options, source
        self.span: Span = _tracer.start_span("turn", context=parent, links=links)  # type: ignore[arg-type]
        self.turn = assistant_pb2.Turn(turn_id=turn_id or uuid.uuid4().hex, conversation_id=conversation_id,
                                       trace_id=trace_id_of(self.span))
        self.user: UserInput | None = None
        self.seed: list[common_pb2.ChatMessage] = []  # history that a new conversation starts with
        self.sent_text: list[str] = []  # response deltas handed to the sink
        self.spoken: dict[int, str] = {}  # sentence index -> text, for sentences whose audio was delivered
        self.degraded: list[assistant_pb2.StageDegraded] = []
        self.failed_stage = common_pb2.STAGE_UNSPECIFIED
        self.failed_code = grpc.StatusCode.OK
        self.stored = False  # start_turn wrote the row
        self.deleted = False  # the conversation was deleted under it: nothing is stored
        self.interrupted = False
        self.first_audio_at = 0.0
        self.playout: Playout | None = None  # set when the client plays the audio in real time
        self.playing_out = False  # everything is sent; the turn waits for the audio to play
        self.paused = False  # the user may be talking over it (see overlap.py)
        self._undelivered = 0  # events handed to the sink and not yet delivered
        self._drained = asyncio.Event()
        self._drained.set()
        self._heard: asyncio.Future[UserInput] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()

    @property
    def turn_id(self) -> str:
        return self.turn.turn_id

    @property
    def listening(self) -> bool:
        """Still waiting for the user's words (an utterance being transcribed)."""
        return not self._heard.done()

    # -- life --------------------------------------------------------------------------------
    def start(self, work: Callable[[TurnHandle], Awaitable[None]]) -> None:
        """Announce the turn and run `work` (the pipeline) in its own task until the turn ends."""
        self.recorder.started(self)
        self._task = asyncio.create_task(self._live(work))

    async def _live(self, work: Callable[[TurnHandle], Awaitable[None]]) -> None:
        try:
            with trace.use_span(self.span, end_on_exit=False):
                try:
                    await work(self)
                    await self.play_out()
                    if self.turn.outcome == assistant_pb2.TURN_OUTCOME_UNSPECIFIED:
                        self.turn.outcome = assistant_pb2.TURN_OUTCOME_COMPLETED
                except asyncio.CancelledError:
                    if self.deleted:
                        self._fail(common_pb2.STAGE_INPUT, grpc.StatusCode.NOT_FOUND,
                                   "the conversation was deleted during the turn")
                    else:
                        self.span.add_event("barge-in", {"spoken_sentences": len(self.spoken)})
                        self.turn.outcome = assistant_pb2.TURN_OUTCOME_INTERRUPTED
                        self.turn.interrupted = True
                except TurnFailure as failure:
                    self._fail(failure.stage, failure.code, failure.message)
                except StageError as exc:
                    self._fail(STAGES.get(exc.service, common_pb2.STAGE_UNSPECIFIED), exc.code,
                               f"{exc.service}: {exc.message}")
                except StoreUnavailable as exc:
                    self._fail(common_pb2.STAGE_STORAGE, exc.code, exc.message)
                except Exception as exc:  # noqa: BLE001 - a turn always ends recorded, never half-done
                    log.exception("turn failed unexpectedly")
                    self._fail(common_pb2.STAGE_UNSPECIFIED, grpc.StatusCode.INTERNAL,
                               f"internal error: {exc.__class__.__name__}")
                await asyncio.shield(self.recorder.ended(self))
        finally:
            self.done.set()

    def _fail(self, stage: int, code: grpc.StatusCode, message: str) -> None:
        self.turn.outcome = assistant_pb2.TURN_OUTCOME_FAILED
        self.turn.error_message = message
        self.failed_stage, self.failed_code = stage, code

    # -- the user's words (audio turns wait for them; text turns have them at once) ------------
    def heard(self, user: UserInput) -> None:
        if not self._heard.done():
            self._heard.set_result(user)

    def not_heard(self, exc: StageError) -> None:
        """Transcription failed for good: the turn fails at the STT stage."""
        if not self._heard.done():
            self._heard.set_exception(exc)

    async def words(self) -> UserInput:
        self.user = await self._heard
        return self.user

    async def play_out(self) -> None:
        """Everything is said: with a real-time client, wait until its audio has played."""
        if self.playout is None or self.interrupted:
            return
        self.playing_out = True
        await self._drained.wait()
        self.span.add_event("sent", {"audio_seconds_left": round(max(0.0, self.playout.ends_at - time.monotonic()), 3)})
        await self.playout.played()
        self.span.add_event("played")

    # -- the user talking over it (overlap.py decides) -------------------------------------------
    def pause(self) -> None:
        """The client is told to pause playback; the playout clock stands still."""
        if self.done.is_set() or self.paused or self.interrupted:
            return
        self.paused = True
        if self.playout is not None:
            self.playout.pause()
        self.span.add_event("playback paused")
        self.send(playback_paused=assistant_pb2.PlaybackPaused())

    def resume(self, heard: str) -> None:
        """It was not an interruption (a backchannel, noise): playback goes on."""
        if not self.paused or self.done.is_set() or self.interrupted:
            return
        self.paused = False
        if self.playout is not None:
            self.playout.resume()
        self.span.add_event("playback resumed", {"backchannel_words": len(heard.split())})
        self.send(playback_resumed=assistant_pb2.PlaybackResumed(heard=heard))

    # -- ending it from outside ----------------------------------------------------------------
    async def interrupt(self) -> None:
        """Barge-in: nothing more of this turn reaches the client but its end; wait for that."""
        if self.done.is_set():
            return
        self.interrupted = True
        if self._task:
            self._task.cancel()
        await self.done.wait()

    async def cancel_deleted(self) -> None:
        """The conversation is gone: end the turn as failed, store nothing."""
        self.deleted = True
        await self.interrupt()

    # -- events ------------------------------------------------------------------------------
    def send(self, **event: object) -> None:
        self._undelivered += 1
        self._drained.clear()
        self.sink.put(self, assistant_pb2.ConverseResponse(
            conversation_id=self.turn.conversation_id, turn_id=self.turn.turn_id, trace_id=self.turn.trace_id,
            **event))  # type: ignore[arg-type]

    def deliverable(self, event: assistant_pb2.ConverseResponse) -> bool:
        """After an interrupt only the turn's end still goes out (queued answer events are dropped)."""
        return not self.interrupted or event.WhichOneof("event") in END_EVENTS

    def on_delivered(self, event: assistant_pb2.ConverseResponse) -> None:
        """The sink handed `event` to the client: a sentence's audio counts as heard (and, with a
        real-time client, starts playing when the audio before it has)."""
        if event.WhichOneof("event") == "audio":
            if event.audio.text:
                self.spoken.setdefault(event.audio.sentence_index, event.audio.text)
            if self.playout is not None:
                self.playout.delivered(event.audio.text, event.audio.chunk.duration_seconds)
        self._undelivered = max(0, self._undelivered - 1)
        if self._undelivered == 0:
            self._drained.set()

    def heard_text(self) -> str:
        """What the user got of the answer: all of it, or after a barge-in what they heard (the
        words played, or without a real-time client the sentences whose audio was delivered)."""
        if self.turn.interrupted and self.options.synthesize_audio:
            if self.playout is not None:
                return self.playout.heard_text()
            return " ".join(self.spoken[i] for i in sorted(self.spoken))
        return "".join(self.sent_text).strip()
