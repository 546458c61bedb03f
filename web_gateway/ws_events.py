"""`Assistant.Converse` responses as the WebSocket's JSON events: one converter per event
kind, in one table. (The bridge in ws.py only adds what belongs to the socket: metrics,
the conversation it is on, the binary frame after an `audio` header.)

Every event carries `type` and `conversation_id`, then `turn_id` and `trace_id` when it
belongs to a turn, then the fields of its kind, in the order the README lists them.
One event is the bridge's own, not the orchestrator's: `reconnected`, in place of
`conversation_opened` when a stream moved to another orchestrator (web_gateway/ws.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from voicebus.v1 import assistant_pb2, audio_pb2
from web_gateway.convert import degraded_json, stage_name, turn_json
from web_gateway.errors import CODE_NAMES, GRPC_TO_HTTP

Fields = dict[str, Any]
TURN_ENDS = ("turn_completed", "turn_interrupted", "turn_failed")


def _conversation_opened(r: assistant_pb2.ConverseResponse) -> Fields:
    return {"created": r.conversation_opened.created, "turn_count": r.conversation_opened.turn_count}


def _turn_started(r: assistant_pb2.ConverseResponse) -> Fields:
    return {"input": r.turn_started.input}


def _transcript(r: assistant_pb2.ConverseResponse) -> Fields:
    t = r.transcript
    return {"text": t.text, "final": t.is_final, "language": t.language_code, "confidence": round(t.confidence, 3)}


def _response_delta(r: assistant_pb2.ConverseResponse) -> Fields:
    return {"text": r.response_delta.text}


def _audio(r: assistant_pb2.ConverseResponse) -> Fields:
    chunk = r.audio.chunk
    encoding = audio_pb2.AudioEncoding.Name(chunk.format.encoding).removeprefix("AUDIO_ENCODING_").lower()
    return {"sequence": chunk.sequence, "sentence_index": r.audio.sentence_index, "text": r.audio.text,
            "encoding": encoding, "sample_rate": chunk.format.sample_rate_hz, "channels": chunk.format.channels or 1,
            "duration": round(chunk.duration_seconds, 4), "bytes": len(chunk.data)}


def _turn_ended(kind: str) -> Callable[[assistant_pb2.ConverseResponse], Fields]:
    return lambda r: {"turn": turn_json(getattr(r, kind).turn)}


def _turn_failed(r: assistant_pb2.ConverseResponse) -> Fields:
    return {"turn": turn_json(r.turn_failed.turn), "stage": stage_name(r.turn_failed.stage),
            "message": r.turn_failed.message}


def _error(r: assistant_pb2.ConverseResponse) -> Fields:
    # A turn's error leaves the stream open (fatal: false); a stream that ends in error is
    # reported by the bridge itself, with fatal: true.
    e = r.error
    http_status, code = GRPC_TO_HTTP.get(CODE_NAMES.get(e.code, grpc.StatusCode.UNKNOWN), (502, "upstream_error"))
    return {"code": code, "status": http_status, "message": e.message, "stage": stage_name(e.stage),
            "retryable": e.retryable, "fatal": False}


# ConverseResponse.event kind -> the fields of its JSON event (after type and the ids).
EVENT_FIELDS: dict[str, Callable[[assistant_pb2.ConverseResponse], Fields]] = {
    "conversation_opened": _conversation_opened,
    "turn_started": _turn_started,
    "speech_started": lambda r: {},
    "transcript": _transcript,
    "response_delta": _response_delta,
    "audio": _audio,
    "degraded": lambda r: degraded_json(r.degraded),
    "playback_paused": lambda r: {},
    "playback_resumed": lambda r: {"heard": r.playback_resumed.heard},
    "turn_completed": _turn_ended("turn_completed"),
    "turn_interrupted": _turn_ended("turn_interrupted"),
    "turn_failed": _turn_failed,
    "error": _error,
}


def event_json(r: assistant_pb2.ConverseResponse) -> tuple[Fields, bytes | None]:
    """The JSON event for a response, and the bytes of the binary frame that must follow it."""
    kind = r.WhichOneof("event")
    event: Fields = {"type": kind, "conversation_id": r.conversation_id}
    if r.turn_id:
        event["turn_id"] = r.turn_id
    if r.trace_id:
        event["trace_id"] = r.trace_id
    if kind in EVENT_FIELDS:
        event.update(EVENT_FIELDS[kind](r))
    return event, r.audio.chunk.data if kind == "audio" else None
