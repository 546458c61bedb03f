"""REST routes: one turn per request (audio upload or JSON chat) and the conversation store."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from opentelemetry import trace
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from voicebus.v1 import assistant_pb2, audio_pb2
from web_gateway.convert import (ANSWER_FORMATS, answer_format, audio_mime, conversation_json, degraded_json,
                                 history_messages, input_format, looks_like_audio, outcome_name, providers_json,
                                 timings_json)
from web_gateway import limits
from web_gateway.errors import ApiError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api")

AUDIO_FORMATS = "WAV, WebM/Opus, Ogg/Opus, MP3, FLAC, M4A, or PCM16 with ?format=pcm16&sample_rate=N"
OUTPUT_FORMAT_DOC = ("The answer's audio: " + " | ".join(ANSWER_FORMATS) + " (mp3 = audio/mpeg, ogg = Ogg/Opus, "
                     "pcm16 = raw 16-bit little-endian mono samples); wav when not given.")
OUTPUT_RATE_DOC = "Sample rate of the answer's audio (ogg: 24000 or 48000); empty = the voice's own rate."


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class ChatRequest(BaseModel):
    """Exactly one of `audio_base64` and `text`."""

    audio_base64: str | None = Field(None, description="A whole recording, base64 (any format STT accepts).")
    text: str | None = Field(None, description="A typed user turn.")
    history: list[ChatMessageIn] = Field(default_factory=list,
                                         description="Earlier messages to seed a NEW conversation with.")
    conversation_id: str | None = Field(None, description="Continue this conversation; empty = a new one.")
    language: str | None = Field(None, description="BCP-47 hint (e.g. `en`, `hi`); empty = detect.")
    audio_format: str | None = Field(None, description="`pcm16` for raw samples (then `sample_rate`); else detected.")
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    synthesize_audio: bool = Field(True, description="False = text answer only.")
    output_format: str | None = Field(None, description=OUTPUT_FORMAT_DOC)
    output_sample_rate: int | None = Field(None, description=OUTPUT_RATE_DOC)


class TurnResponse(BaseModel):
    conversation_id: str
    turn_id: str
    transcript: str = Field(description="What the user said (or typed).")
    response: str = Field(description="The assistant's answer.")
    audio_output: str | None = Field(description="The answer's speech, base64 (WAV unless output_format says "
                                                  "otherwise), or null without audio.")
    audio_mime: str | None = Field(description="audio/wav, audio/mpeg, audio/ogg or audio/L16;rate=N.")
    language: str
    outcome: str = Field(description="completed, failed, interrupted or no_speech.")
    timings: dict[str, float]
    providers: dict[str, Any]
    degraded: list[dict[str, str]]
    trace_id: str


async def _call(request: Request, method: str, message: Any, timeout: float, started: bool = False) -> Any:
    """`method` on one of the orchestrators (web_gateway/orchestrators.py), the next one if the
    first is draining or unreachable; `started`: the call runs a turn (see elsewhere_first)."""
    return await request.app.state.orchestrators.call(method, message, started=started, timeout=timeout,
                                                      metadata=_metadata(request))


def _metadata(request: Request) -> tuple[tuple[str, str], ...]:
    """The request id travels with the call, into the orchestrator's log lines."""
    return (("x-request-id", request.scope["state"]["request_id"]),)


def _options(language: str | None, synthesize: bool, output: audio_pb2.AudioFormat) -> assistant_pb2.TurnOptions:
    return assistant_pb2.TurnOptions(language_code=limits.language(language), synthesize_audio=synthesize,
                                     output_format=output)


async def _run_turn(request: Request, route: str, turn_request: assistant_pb2.ProcessTurnRequest) -> dict[str, Any]:
    settings = request.app.state.settings
    started = time.perf_counter()
    try:
        reply: assistant_pb2.ProcessTurnResponse = await _call(
            request, "ProcessTurn", turn_request, settings.gateway_turn_timeout_seconds, started=True)
    except Exception:
        request.app.state.metrics.turns.labels(route, "error").inc()
        raise
    turn = reply.turn
    ctx = trace.get_current_span().get_span_context()
    trace_id = turn.trace_id or (f"{ctx.trace_id:032x}" if ctx.is_valid else "")
    request.state.trace_id = trace_id
    outcome = outcome_name(turn.outcome)
    request.app.state.metrics.turns.labels(route, outcome).inc()
    timings = timings_json(turn.timings)
    timings["gateway_seconds"] = round(time.perf_counter() - started, 4)
    log.info("turn", extra={"fields": {"route": route, "conversation_id": turn.conversation_id,
                                       "turn_id": turn.turn_id, "outcome": outcome,
                                       "seconds": timings["gateway_seconds"]}})
    return {
        "conversation_id": turn.conversation_id, "turn_id": turn.turn_id,
        "transcript": turn.user_text, "response": turn.assistant_text,
        "audio_output": base64.b64encode(reply.audio).decode("ascii") if reply.audio else None,
        "audio_mime": audio_mime(reply.audio_format) if reply.audio else None,
        "language": turn.language_code, "outcome": outcome, "timings": timings,
        "providers": providers_json(turn.providers), "degraded": [degraded_json(d) for d in reply.degraded],
        "trace_id": trace_id,
    }


def _check_audio(data: bytes, limit: int, audio_format: audio_pb2.AudioFormat) -> None:
    if not data:
        raise ApiError(400, "no_audio", "no audio: send a multipart field `file` (or `audio`), "
                                        "or the recording itself as the request body")
    if len(data) > limit:
        raise ApiError(413, "too_large", f"the audio is {limits.megabytes(len(data))}; the limit is "
                                         f"{limits.megabytes(limit)} (VOICEBUS_MAX_UPLOAD_MB)")
    if audio_format.encoding == audio_pb2.AUDIO_ENCODING_UNSPECIFIED and not looks_like_audio(data):
        raise ApiError(415, "unsupported_media_type", f"the upload is not audio in a format we accept ({AUDIO_FORMATS})")


UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary", "description": "The recording (or use the field `audio`)."},
        "conversation_id": {"type": "string"}, "language": {"type": "string"}}}},
    "audio/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}


@router.post("/process_audio", response_model=TurnResponse, openapi_extra=UPLOAD_BODY,
             summary="One spoken turn: an audio upload in, transcript + answer text + speech (WAV, MP3, Ogg, PCM16)")
async def process_audio(
    request: Request,
    conversation_id: str | None = Query(None, description="Continue this conversation; empty = a new one."),
    language: str | None = Query(None, description="BCP-47 hint; empty = detect."),
    format: str | None = Query(None, description="`pcm16` for raw samples; empty = detect the container."),
    sample_rate: int | None = Query(None, ge=8000, le=48000, description="Sample rate of pcm16 audio."),
    synthesize_audio: bool = Query(True, description="False = text answer only."),
    output_format: str | None = Query(None, description=OUTPUT_FORMAT_DOC + " Without it, `Accept: audio/mpeg` "
                                      "(or audio/ogg, audio/wav, audio/L16) picks the format."),
    output_sample_rate: int | None = Query(None, description=OUTPUT_RATE_DOC),
) -> dict[str, Any]:
    output = answer_format(output_format, output_sample_rate, request.headers.get("accept"))
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = form.get("file") or form.get("audio")
        if isinstance(upload, UploadFile):
            data = await upload.read()
        elif isinstance(upload, str):
            raise ApiError(400, "no_audio", "the field `file` must be a file upload, not a text value")
        else:
            data = b""
        conversation_id = conversation_id or _form_text(form.get("conversation_id"))
        language = language or _form_text(form.get("language"))
    elif content_type in ("application/json", "application/x-www-form-urlencoded") or content_type.startswith("text/"):
        raise ApiError(415, "unsupported_media_type",
                       f"{content_type} is not audio: upload a recording ({AUDIO_FORMATS}); for JSON use /api/chat")
    else:
        data = await request.body()
    audio_format = input_format(format, sample_rate)
    _check_audio(data, request.app.state.settings.max_upload_bytes(), audio_format)
    turn_request = assistant_pb2.ProcessTurnRequest(
        conversation_id=limits.conversation_id(conversation_id), audio=data, audio_format=audio_format,
        options=_options(language, synthesize_audio, output))
    return await _run_turn(request, "process_audio", turn_request)


def _form_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@router.post("/chat", response_model=TurnResponse,
             summary="One turn from JSON: base64 audio or text in, the same answer out as /api/process_audio")
async def chat(request: Request, body: ChatRequest) -> dict[str, Any]:
    has_audio, has_text = bool(body.audio_base64), body.text is not None
    if has_audio == has_text:
        raise ApiError(422, "invalid_request", "send exactly one of `audio_base64` and `text`")
    limits.check_unicode(body.model_dump(exclude={"audio_base64"}))  # base64 is ASCII or invalid_base64
    limits.history(body.history)
    output = answer_format(body.output_format, body.output_sample_rate)
    turn_request = assistant_pb2.ProcessTurnRequest(
        conversation_id=limits.conversation_id(body.conversation_id), history=history_messages(
            [m.model_dump() for m in body.history]), options=_options(body.language, body.synthesize_audio, output))
    if has_text:
        text = limits.text((body.text or "").strip())
        if not text:
            raise ApiError(422, "empty_text", "`text` is empty")
        turn_request.text = text
    else:
        try:
            data = base64.b64decode((body.audio_base64 or "").strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "invalid_base64", "`audio_base64` is not valid base64") from None
        audio_format = input_format(body.audio_format, body.sample_rate)
        _check_audio(data, request.app.state.settings.max_upload_bytes(), audio_format)
        turn_request.audio = data
        turn_request.audio_format.CopyFrom(audio_format)
    return await _run_turn(request, "chat", turn_request)


@router.get("/conversations", summary="Conversations, most recently updated first")
async def list_conversations(
    request: Request, page_size: int = Query(50, ge=1, le=500), page_token: str = Query(""),
) -> dict[str, Any]:
    reply = await _call(
        request, "ListConversations",
        assistant_pb2.ListConversationsRequest(page_size=page_size, page_token=limits.page_token(page_token)),
        request.app.state.settings.gateway_call_timeout_seconds)
    return {"conversations": [conversation_json(c, with_turns=False) for c in reply.conversations],
            "next_page_token": reply.next_page_token}


def _existing_id(conversation_id: str) -> str:
    """A path's id as it is (no stripping: " abc" is not "abc"); one that cannot exist is a 404."""
    if limits.conversation_id(conversation_id) != conversation_id or not conversation_id:
        raise ApiError(404, "not_found", f"no conversation {conversation_id[:40]!r}")
    return conversation_id


@router.get("/conversations/{conversation_id}", summary="One conversation with its turns, oldest first")
async def get_conversation(request: Request, conversation_id: str) -> dict[str, Any]:
    reply = await _call(
        request, "GetConversation", assistant_pb2.GetConversationRequest(conversation_id=_existing_id(conversation_id)),
        request.app.state.settings.gateway_call_timeout_seconds)
    return conversation_json(reply.conversation, with_turns=True)


@router.delete("/conversations/{conversation_id}", status_code=204, summary="Delete a conversation and its turns")
async def delete_conversation(request: Request, conversation_id: str) -> Response:
    await _call(
        request, "DeleteConversation",
        assistant_pb2.DeleteConversationRequest(conversation_id=_existing_id(conversation_id)),
        request.app.state.settings.gateway_call_timeout_seconds)
    return Response(status_code=204)
