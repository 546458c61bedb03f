"""The `Assistant` gRPC servicer: Converse, ProcessTurn and conversation CRUD.

Each entry point checks its input with `orchestrator.intake` and maps the one `InputError`
to its status; turns themselves are run by their handles (orchestrator/turn.py).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from orchestrator import intake
from orchestrator.clients import StageError, stt_transcribe
from orchestrator.conversations import DRAINING
from orchestrator.converse import ConverseSession, StreamEnd
from orchestrator.intake import InputError
from orchestrator.pipeline import run_turn
from orchestrator.recorder import Deps, TurnRecorder
from orchestrator.store import StoreUnavailable
from orchestrator.turn import TurnHandle, UserInput
from voicebus.audio import wav_bytes
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc, audio_pb2, common_pb2, stt_pb2

log = logging.getLogger(__name__)
MAX_PAGE = 500
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def store_status(method: F) -> F:
    """A unary call that meets a store outage ends with UNAVAILABLE and the store's message."""
    @functools.wraps(method)
    async def call(self: Any, request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except StoreUnavailable as exc:
            log.warning("conversation store unavailable", extra={"fields": {"error": exc.message}})
            await context.abort(exc.code, exc.message)
    return call  # type: ignore[return-value]


class Collector:
    """ProcessTurn's sink: every event is delivered at once; the audio is kept for the response."""

    def __init__(self) -> None:
        self.chunks: list[audio_pb2.AudioChunk] = []

    def put(self, handle: TurnHandle, event: assistant_pb2.ConverseResponse) -> None:
        if not handle.deliverable(event):
            return
        if event.WhichOneof("event") == "audio":
            self.chunks.append(event.audio.chunk)
        handle.on_delivered(event)


class AssistantServicer(assistant_pb2_grpc.AssistantServicer):
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.recorder = TurnRecorder(deps)

    async def Converse(self, request_iterator: AsyncIterator[assistant_pb2.ConverseRequest],
                       context: aio.ServicerContext) -> AsyncIterator[assistant_pb2.ConverseResponse]:
        session = ConverseSession(self.recorder)
        async for item in session.run(request_iterator):
            if isinstance(item, StreamEnd):
                await context.abort(item.code, item.message)
            yield item

    @store_status
    async def ProcessTurn(self, request: assistant_pb2.ProcessTurnRequest,
                          context: aio.ServicerContext) -> assistant_pb2.ProcessTurnResponse:
        try:
            return await self._process(request)
        except InputError as bad:
            await context.abort(bad.code, bad.message)
        except StageError as exc:
            code = exc.code if exc.is_input_error or exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED \
                else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, exc.message if exc.is_input_error else f"{exc.service} unavailable: "
                                                                                f"{exc.message}")
        raise AssertionError("unreachable: abort raises")

    async def _process(self, request: assistant_pb2.ProcessTurnRequest) -> assistant_pb2.ProcessTurnResponse:
        settings, store, conversations = self.deps.settings, self.deps.store, self.deps.conversations
        intake.check_process_turn(request, settings)
        if conversations.draining:
            raise InputError(grpc.StatusCode.UNAVAILABLE, DRAINING)
        if request.conversation_id and not await store.exists(request.conversation_id):
            raise InputError(grpc.StatusCode.NOT_FOUND, f"no conversation {request.conversation_id!r}")
        conversation_id = request.conversation_id or uuid.uuid4().hex  # stored with its first turn

        options = assistant_pb2.TurnOptions()
        options.CopyFrom(request.options)
        wanted = options.output_format.encoding or audio_pb2.AUDIO_ENCODING_PCM16
        if wanted == audio_pb2.AUDIO_ENCODING_WAV:
            # One WAV file for the whole answer: collect PCM16 and write the header once.
            options.output_format.encoding = audio_pb2.AUDIO_ENCODING_PCM16

        received_at = time.monotonic()
        if request.WhichOneof("input") == "audio":  # an upload is judged (decoded) before a turn begins
            reply = await stt_transcribe(self.deps.registry, stt_pb2.TranscribeRequest(
                request_id=uuid.uuid4().hex, audio=request.audio, config=stt_pb2.RecognitionConfig(
                    encoding=request.audio_format.encoding, sample_rate_hz=request.audio_format.sample_rate_hz,
                    language_code=options.language_code)), settings.stt_timeout_seconds)
            t = reply.transcript
            user = UserInput(text=t.text, source="audio", language=t.language_code, confidence=t.confidence,
                             no_speech=t.no_speech, no_speech_probability=t.no_speech_probability,
                             stt_seconds=reply.processing_seconds, stt_model=reply.model,
                             spoken_at=received_at)
        else:
            user = UserInput(text=request.text.strip(), source="text", language=options.language_code,
                             spoken_at=received_at)

        turn_id = uuid.uuid4().hex
        if not await conversations.claim(conversation_id, turn_id):
            raise InputError(grpc.StatusCode.ABORTED, "another turn is running in this conversation")
        collector = Collector()
        handle = TurnHandle(self.recorder, collector, conversation_id, user.source, options, turn_id=turn_id)
        if not request.conversation_id:
            handle.seed = list(request.history)
        conversations.hold(handle)
        handle.start(run_turn)
        handle.heard(user)
        try:
            await handle.done.wait()
        finally:
            if not handle.done.is_set():  # the caller went away: the turn ends as interrupted
                await handle.interrupt()
        if handle.deleted:
            raise InputError(grpc.StatusCode.NOT_FOUND, f"conversation {conversation_id!r} was deleted during the turn")
        if handle.failed_stage == common_pb2.STAGE_STORAGE:  # nothing was answered: the caller may retry
            raise StoreUnavailable(handle.turn.error_message)

        audio = b"".join(c.data for c in collector.chunks)
        fmt = audio_pb2.AudioFormat()
        if collector.chunks:
            fmt.CopyFrom(collector.chunks[0].format)
        if wanted == audio_pb2.AUDIO_ENCODING_WAV and collector.chunks:
            audio = wav_bytes(audio, fmt.sample_rate_hz or 22050)
            fmt.encoding = audio_pb2.AUDIO_ENCODING_WAV
        return assistant_pb2.ProcessTurnResponse(turn=handle.turn, audio=audio, audio_format=fmt,
                                                 degraded=handle.degraded)

    @store_status
    async def GetConversation(self, request: assistant_pb2.GetConversationRequest,
                              context: aio.ServicerContext) -> assistant_pb2.GetConversationResponse:
        conversation = None
        if intake.CONVERSATION_ID.fullmatch(request.conversation_id):
            conversation = await self.deps.store.get(request.conversation_id)
        if conversation is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no conversation {intake.shown(request.conversation_id)}")
        return assistant_pb2.GetConversationResponse(conversation=conversation)

    @store_status
    async def ListConversations(self, request: assistant_pb2.ListConversationsRequest,
                                context: aio.ServicerContext) -> assistant_pb2.ListConversationsResponse:
        if request.page_size < 0 or request.page_size > MAX_PAGE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be 0..{MAX_PAGE}")
        try:
            offset = intake.page_offset(request.page_token)
        except InputError as bad:
            await context.abort(bad.code, bad.message)
        limit = request.page_size or 50
        conversations, more = await self.deps.store.list(limit, offset)
        return assistant_pb2.ListConversationsResponse(conversations=conversations,
                                                       next_page_token=str(offset + limit) if more else "")

    @store_status
    async def DeleteConversation(self, request: assistant_pb2.DeleteConversationRequest,
                                 context: aio.ServicerContext) -> assistant_pb2.DeleteConversationResponse:
        """A running turn in it is cancelled (nothing of it is stored) and its streams end with NOT_FOUND."""
        cid = request.conversation_id
        if not intake.CONVERSATION_ID.fullmatch(cid) or not await self.deps.store.exists(cid):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no conversation {intake.shown(cid)}")
        await self.deps.conversations.end_all(cid)
        await self.deps.store.delete(cid)
        return assistant_pb2.DeleteConversationResponse()
