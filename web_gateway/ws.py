"""`WS /ws`: a browser's WebSocket bridged to one `Assistant.Converse` stream at a time.

In: binary frames are audio; text frames are JSON control messages (`start`,
`audio_start`, `end_of_audio`, `text`, `interrupt`). Out: JSON events as the orchestrator sends them;
each audio chunk is a JSON `audio` header followed at once by one binary frame with its
bytes (PCM16 by default, which the page schedules with Web Audio as it arrives).
The WebSocket outlives streams: a new `start` (another conversation) replaces the
stream, and audio after a stream ended (e.g. the orchestrator restarted) opens a new
one on the same conversation.

Orchestrators come and go (web_gateway/orchestrators.py): a new stream goes to the next
one in turn, and when a stream's orchestrator dies or drains (UNAVAILABLE) the bridge opens
the same conversation on another at once. The client then gets one `reconnected` event in
place of `conversation_opened` (with `lost_turn_id` when a turn was cut short by the
death) and goes on talking; the history is in the shared store.

Each turn is its own trace (web_gateway.observability.WsTurnSpans): `text` and
`audio_start` may carry the client's `traceparent` for that turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import grpc
from fastapi import WebSocket, WebSocketDisconnect
from opentelemetry import context as otel_context
from opentelemetry import trace

from voicebus.telemetry import extract_context, trace_id_of, traceparent_of
from voicebus.v1 import assistant_pb2, audio_pb2
from web_gateway import limits
from web_gateway.convert import input_format, output_format, playback_mode
from web_gateway.errors import ApiError, from_grpc
from web_gateway.observability import GatewayMetrics, WsTurnSpans
from web_gateway.orchestrators import Orchestrators
from web_gateway.security import chosen_subprotocol, websocket_authorized
from web_gateway.ws_events import TURN_ENDS, event_json

log = logging.getLogger(__name__)
CLOSE_UNAUTHORIZED = 4401
# Orchestrators tried in a row for one stream before its client is told it failed.
MAX_MOVES = 3


def _error_event(code: str, status: int, message: str, fatal: bool = False, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "status": status, "message": message, "fatal": fatal, **extra}


class ConverseBridge:
    def __init__(self, websocket: WebSocket, orchestrators: Orchestrators, metrics: GatewayMetrics) -> None:
        self.ws, self.orchestrators, self.metrics = websocket, orchestrators, metrics
        self.address = ""  # the orchestrator of the current stream
        self.tried: set[str] = set()  # orchestrators that failed this stream since it last opened
        self.moving: dict[str, Any] | None = None  # set while a stream moves to another orchestrator
        self.open_turn = ""  # the turn started and not yet ended on the current stream
        self.request_id: str = websocket.scope["state"]["request_id"]
        self.spans = WsTurnSpans(self.request_id)
        self.recording: trace.Span | None = None  # the turn span of the recording being received
        self.recording_sent = False  # its traceparent went to the orchestrator (with the first audio)
        self.send_lock = asyncio.Lock()
        self.config = assistant_pb2.ConverseConfig(interim_results=True, options=assistant_pb2.TurnOptions(
            synthesize_audio=True, output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16)))
        self.traceparent = ""
        self.queue: asyncio.Queue[assistant_pb2.ConverseRequest | None] | None = None
        self.call: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.turn_clock: float | None = None  # when the user finished (end_of_audio / text)
        self.first_audio_seen: set[str] = set()
        # After a stream ended in error, audio and text wait for a new `start`: a client still
        # streaming its microphone would otherwise reopen (and fail) four times a second.
        self.stream_failed = False
        self.told_to_restart = False

    # ---- WebSocket side -------------------------------------------------------------
    async def send_json(self, event: dict[str, Any], data: bytes | None = None) -> None:
        async with self.send_lock:  # an audio header and its bytes must stay adjacent
            await self.ws.send_text(json.dumps(event, ensure_ascii=False))
            if data is not None:
                await self.ws.send_bytes(data)

    async def run(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    await self.on_audio(message["bytes"])
                elif message.get("text") is not None:
                    await self.on_control(message["text"])
        except WebSocketDisconnect:
            pass
        finally:
            await self.close_stream(cancel=True)

    async def on_audio(self, data: bytes) -> None:
        if not data:
            return
        if not await self.ensure_stream():
            return
        if self.recording is None:
            self.recording, self.recording_sent = self.spans.begin("audio", ""), False
        request = assistant_pb2.ConverseRequest(audio=data)
        if not self.recording_sent:  # the first audio of a recording starts the turn's trace
            request.traceparent, self.recording_sent = traceparent_of(self.recording), True
        await self.put(request)

    async def on_control(self, raw: str) -> None:
        try:
            message = json.loads(raw)
            kind = message.get("type") if isinstance(message, dict) else None
        except (ValueError, RecursionError):  # not JSON, a 5,000-digit number, nesting too deep
            await self.send_json(_error_event("invalid_json", 400, "control messages must be JSON objects"))
            return
        try:
            limits.check_unicode(message)
            await self.dispatch(kind, message)
        except ApiError as refused:  # the message is refused; the socket and the stream go on
            await self.send_json(_error_event(refused.code, refused.status, refused.message))

    async def dispatch(self, kind: Any, message: Any) -> None:
        if kind == "start":
            await self.on_start(message)
        elif kind == "audio_start":
            # Optional, before a recording's first audio: its turn starts now, in the client's trace.
            if self.recording is None:
                self.recording = self.spans.begin("audio", str(message.get("traceparent") or ""))
                self.recording_sent = False
        elif kind == "end_of_audio":
            self.turn_clock = time.perf_counter()
            if self.recording is not None:
                if self.recording.is_recording():  # its turn may be over already
                    self.recording.add_event("end_of_audio")
                if not self.recording_sent:  # pressed and released without audio: no turn
                    self.spans.end(trace_id_of(self.recording), "no_audio")
                self.recording = None
            if self.call is not None:
                await self.put(assistant_pb2.ConverseRequest(end_of_audio=assistant_pb2.EndOfAudio()))
        elif kind == "interrupt":
            if self.call is not None:
                await self.put(assistant_pb2.ConverseRequest(interrupt=assistant_pb2.Interrupt()))
        elif kind == "text":
            text = message.get("text")
            if not isinstance(text, str) or not text.strip():
                await self.send_json(_error_event("empty_text", 422, "`text` must be a non-empty string"))
                return
            limits.text(text.strip())
            self.turn_clock = time.perf_counter()
            if await self.ensure_stream():
                span = self.spans.begin("text", str(message.get("traceparent") or ""))
                await self.put(assistant_pb2.ConverseRequest(text=text.strip(), traceparent=traceparent_of(span)))
        elif kind == "playback":
            await self.on_playback(message)
        elif kind == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_json(_error_event(
                "invalid_message", 400, f"unknown message type {repr(kind)[:60]}; expected start, end_of_audio, "
                                        "text, interrupt, playback, audio_start or ping"))

    async def on_playback(self, message: dict[str, Any]) -> None:
        """How much of a turn's audio the page has played (with `"playback": "realtime"`)."""
        played, turn_id = message.get("played_ms"), message.get("turn_id")
        if not isinstance(played, (int, float)) or isinstance(played, bool) or not 0 <= played < 2**32:
            raise ApiError(422, "invalid_playback", "`played_ms` must be a number of milliseconds, 0 or more")
        if not isinstance(turn_id, str) or not turn_id or len(turn_id) > limits.CONVERSATION_ID_MAX_CHARS:
            raise ApiError(422, "invalid_playback", "`turn_id` must be the id of the turn being played")
        if self.call is not None:
            await self.put(assistant_pb2.ConverseRequest(
                playback=assistant_pb2.PlaybackReport(turn_id=turn_id, played_ms=int(played))))

    async def on_start(self, message: dict[str, Any]) -> None:
        try:
            conversation_id = limits.conversation_id(str(message.get("conversation_id") or ""))
        except ApiError as unknown:
            # An id that cannot exist gets what an unknown one gets from the orchestrator (which is
            # not asked): the stream ends, and the client must start again.
            await self.close_stream(cancel=True)
            self.stream_failed, self.told_to_restart = True, False
            await self.send_json(_error_event(unknown.code, unknown.status, unknown.message, fatal=True))
            return
        try:
            self.config = self.start_config(message)
            self.config.conversation_id = conversation_id
        except (ApiError, TypeError, ValueError, OverflowError) as exc:
            text = exc.message if isinstance(exc, ApiError) else f"bad start message: {exc}"
            await self.send_json(_error_event("invalid_start", 422, text))
            return
        self.traceparent = str(message.get("traceparent") or "")
        self.stream_failed = False
        await self.close_stream(cancel=True)
        await self.open_stream()

    @staticmethod
    def start_config(m: dict[str, Any]) -> assistant_pb2.ConverseConfig:
        """The stream's config from a `start` (its conversation id is checked by on_start)."""
        return assistant_pb2.ConverseConfig(
            input_format=input_format(m.get("format"), m.get("sample_rate")),
            interim_results=bool(m.get("interim_results", True)),
            end_of_utterance_silence_ms=int(m.get("end_of_utterance_silence_ms") or 0),
            realtime_playback=playback_mode(m.get("playback")),
            options=assistant_pb2.TurnOptions(
                language_code=limits.language(str(m.get("language") or "")),
                output_format=output_format(m.get("output_format"), m.get("output_sample_rate")),
                synthesize_audio=bool(m.get("synthesize_audio", True)),
                voice=limits.name(m.get("voice"), "voice"),
                tts_engine=limits.name(m.get("tts_engine"), "tts_engine")))

    # ---- gRPC side ------------------------------------------------------------------
    async def put(self, request: assistant_pb2.ConverseRequest) -> None:
        if self.queue is not None:
            await self.queue.put(request)

    async def ensure_stream(self) -> bool:
        """Open the stream if needed; False when the client must send `start` first."""
        if self.call is not None:
            return True
        if self.stream_failed:
            if not self.told_to_restart:
                self.told_to_restart = True
                await self.send_json(_error_event("no_stream", 409, "the conversation stream ended (see the error "
                                                                    "before); send a start message to go on"))
            return False
        await self.open_stream()
        return True

    async def open_stream(self) -> None:
        """A Converse stream on the next orchestrator (one that has not just failed it, if any)."""
        addresses = self.orchestrators.for_new()
        self.address = next((a for a in addresses if a not in self.tried), addresses[0])
        queue: asyncio.Queue[assistant_pb2.ConverseRequest | None] = asyncio.Queue()
        await queue.put(assistant_pb2.ConverseRequest(config=self.config))

        async def requests() -> Any:
            while (item := await queue.get()) is not None:
                yield item

        # The browser's traceparent (from `start`) parents the stream's client span.
        token = otel_context.attach(extract_context({"traceparent": self.traceparent} if self.traceparent else {}))
        try:
            call = self.orchestrators.stub(self.address).Converse(
                requests(), metadata=(("x-request-id", self.request_id),))
        finally:
            otel_context.detach(token)
        self.queue, self.call = queue, call
        self.reader = asyncio.create_task(self.forward(call))

    async def close_stream(self, cancel: bool) -> None:
        call, reader, queue = self.call, self.reader, self.queue
        self.call = self.reader = self.queue = None
        self.spans.end_all("stream_closed")
        self.recording = None
        if queue is not None:
            queue.put_nowait(None)
        if cancel and call is not None:
            call.cancel()
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def forward(self, call: Any) -> None:
        try:
            async for response in call:
                await self.relay(response)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and self.call is not call:
                return  # we cancelled it (a new start, or the socket closed)
            if self.call is call and await self.move(exc):
                return
            err = from_grpc(exc)
            self.stream_failed, self.told_to_restart = True, False
            self.spans.end_all("stream_failed")
            self.recording = None
            with contextlib.suppress(Exception):
                await self.send_json(_error_event(err.code, err.status, err.message, fatal=True))
        except Exception:  # the socket went away while we were sending: nothing to tell
            log.debug("websocket send failed", exc_info=True)
        if self.call is call:  # the stream ended by itself: the next audio/text opens another
            self.call = self.queue = None
            self.reader = None

    async def move(self, exc: grpc.aio.AioRpcError) -> bool:
        """The stream's orchestrator died or drains: open the conversation on another. False when
        the failure is not one, or every known orchestrator (at most MAX_MOVES) failed it: the client is told."""
        if exc.code() == grpc.StatusCode.NOT_FOUND and self.moving is not None and not self.moving["fresh"]:
            # Its first turn was never stored (the orchestrator died before the words were known):
            # nothing to continue, so the client goes on in a new conversation.
            self.config.conversation_id, self.moving["fresh"] = "", True
        elif exc.code() == grpc.StatusCode.UNAVAILABLE:
            self.tried.add(self.address)
            self.orchestrators.failed(self.address)
            if len(self.tried) >= MAX_MOVES or self.tried.issuperset(self.orchestrators.for_new()):
                return False  # every orchestrator we know failed this stream: the client is told
            if self.moving is None and self.config.conversation_id:  # else nothing was opened yet
                self.moving = {"lost_turn_id": self.open_turn, "fresh": False}
        else:
            return False
        log.warning("orchestrator lost; moving the stream", extra={"fields": {
            "conversation_id": self.config.conversation_id, "orchestrator": self.address,
            "grpc_code": exc.code().name}})
        self.open_turn = ""
        self.spans.end_all("orchestrator_lost")
        self.recording = None
        await self.open_stream()
        return True

    def _reconnected(self, r: assistant_pb2.ConverseResponse) -> dict[str, Any]:
        """What the client hears instead of `conversation_opened` once a moved stream is open."""
        assert self.moving is not None
        lost, created = self.moving["lost_turn_id"], self.moving["fresh"]
        event: dict[str, Any] = {"type": "reconnected", "conversation_id": r.conversation_id,
                                 "turn_count": r.conversation_opened.turn_count, "created": created}
        if lost:
            event["lost_turn_id"] = lost
        event["message"] = ("the assistant moved to another server; " + (
            "the answer in progress was lost, please say it again" if lost else "go on talking") + (
            " (in a new conversation: the first turn was not saved)" if created else ""))
        self.moving = None
        self.tried.clear()
        return event

    async def relay(self, r: assistant_pb2.ConverseResponse) -> None:
        event, data = event_json(r)
        kind = event["type"]
        if kind == "conversation_opened":  # audio after a stream error reopens this conversation
            self.config.conversation_id = r.conversation_id
            self.orchestrators.ok(self.address)
            if self.moving is not None:
                event = self._reconnected(r)
            self.tried.clear()
        elif kind == "turn_started":
            self.open_turn = r.turn_id
        elif kind == "audio":
            self._first_audio(r.turn_id)
        elif kind in TURN_ENDS:
            self.open_turn = ""
            self.metrics.turns.labels("ws", "failed" if kind == "turn_failed" else event["turn"]["outcome"]).inc()
        if ended := self.spans.event(r.trace_id, r.turn_id, kind or "", r.conversation_id):
            with trace.use_span(ended):  # the log line carries the turn's trace id
                log.info("ws turn", extra={"fields": {"conversation_id": r.conversation_id, "turn_id": r.turn_id,
                                                      "event": kind}})
        await self.send_json(event, data)

    def _first_audio(self, turn_id: str) -> None:
        if turn_id in self.first_audio_seen:
            return
        self.first_audio_seen.add(turn_id)
        if self.turn_clock is not None:
            self.metrics.ws_first_audio.observe(time.perf_counter() - self.turn_clock)
            self.turn_clock = None


async def websocket_endpoint(websocket: WebSocket) -> None:
    app = websocket.app
    await websocket.accept(subprotocol=chosen_subprotocol(websocket),
                           headers=[(b"x-request-id", websocket.scope["state"]["request_id"].encode())])
    if not websocket_authorized(websocket):
        # Accept first, then close with a reason: a browser cannot read a refused handshake.
        await websocket.send_text(json.dumps(_error_event(
            "unauthenticated", 401, "missing or invalid token: connect with ?token=<VOICEBUS_AUTH_TOKEN>, "
                                    "a 'bearer.<token>' subprotocol or an Authorization header", fatal=True)))
        await websocket.close(CLOSE_UNAUTHORIZED, "unauthenticated")
        return
    app.state.metrics.ws_open.inc()
    try:
        await ConverseBridge(websocket, app.state.orchestrators, app.state.metrics).run()
    finally:
        app.state.metrics.ws_open.dec()
