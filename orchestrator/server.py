"""The `Assistant` gRPC servicer: Converse, ProcessTurn and conversation CRUD."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from orchestrator.clients import StageError, stt_transcribe
from orchestrator.converse import ConversationLocks, ConverseSession, StreamEnd, check_input_format
from orchestrator.turn import Deps, TurnRunner, UserInput
from voicebus.audio import wav_bytes
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc, audio_pb2, stt_pb2

log = logging.getLogger(__name__)
MAX_PAGE = 500


class AssistantServicer(assistant_pb2_grpc.AssistantServicer):
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.locks = ConversationLocks()

    async def Converse(self, request_iterator: AsyncIterator[assistant_pb2.ConverseRequest],
                       context: aio.ServicerContext) -> AsyncIterator[assistant_pb2.ConverseResponse]:
        session = ConverseSession(self.deps, self.locks)
        async for item in session.run(request_iterator):
            if isinstance(item, StreamEnd):
                await context.abort(item.code, item.message)
            yield item

    async def ProcessTurn(self, request: assistant_pb2.ProcessTurnRequest,
                          context: aio.ServicerContext) -> assistant_pb2.ProcessTurnResponse:
        settings, store = self.deps.settings, self.deps.store
        kind = request.WhichOneof("input")
        if kind is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send audio or text")
        if kind == "text" and not request.text.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty text")
        if kind == "text" and len(request.text) > settings.max_text_chars:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"text is {len(request.text)} characters; the limit is {settings.max_text_chars}")
        if kind == "audio" and not request.audio:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the audio is empty (0 bytes)")
        if kind == "audio" and len(request.audio) > settings.max_audio_mb * 1024 * 1024:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"audio over the limit of {settings.max_audio_mb:g} MB")
        try:
            check_input_format(request.audio_format)
        except StreamEnd as bad:
            await context.abort(bad.code, bad.message)

        if request.conversation_id:
            if not await store.exists(request.conversation_id):
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no conversation {request.conversation_id!r}")
            conversation_id = request.conversation_id
        else:
            conversation_id = await store.create_conversation(list(request.history))

        turn = assistant_pb2.Turn(turn_id=uuid.uuid4().hex, conversation_id=conversation_id)
        if not self.locks.acquire(conversation_id, turn.turn_id):
            await context.abort(grpc.StatusCode.ABORTED, "another turn is running in this conversation")
        try:
            return await self._process(request, turn)
        except StageError as exc:
            code = exc.code if exc.is_input_error else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, exc.message if exc.is_input_error else f"{exc.service} unavailable: "
                                                                                f"{exc.message}")
            raise  # unreachable: abort raises
        finally:
            self.locks.release(conversation_id, turn.turn_id)

    async def _process(self, request: assistant_pb2.ProcessTurnRequest,
                       turn: assistant_pb2.Turn) -> assistant_pb2.ProcessTurnResponse:
        options = assistant_pb2.TurnOptions()
        options.CopyFrom(request.options)
        wanted = options.output_format.encoding or audio_pb2.AUDIO_ENCODING_PCM16
        if wanted == audio_pb2.AUDIO_ENCODING_WAV:
            # One WAV file for the whole answer: collect PCM16 and write the header once.
            options.output_format.encoding = audio_pb2.AUDIO_ENCODING_PCM16

        received_at = time.monotonic()
        if request.WhichOneof("input") == "audio":
            reply = await stt_transcribe(self.deps.registry, stt_pb2.TranscribeRequest(
                request_id=turn.turn_id, audio=request.audio, config=stt_pb2.RecognitionConfig(
                    encoding=request.audio_format.encoding, sample_rate_hz=request.audio_format.sample_rate_hz,
                    language_code=options.language_code)), self.deps.settings.stt_timeout_seconds)
            t = reply.transcript
            user = UserInput(text=t.text, source="audio", language=t.language_code, confidence=t.confidence,
                             no_speech=t.no_speech, stt_seconds=reply.processing_seconds, stt_model=reply.model,
                             spoken_at=received_at)
        else:
            user = UserInput(text=request.text.strip(), source="text", language=options.language_code,
                             spoken_at=received_at)

        chunks: list[audio_pb2.AudioChunk] = []

        def collect(event: assistant_pb2.ConverseResponse) -> None:
            if event.WhichOneof("event") == "audio":
                chunks.append(event.audio.chunk)

        runner = TurnRunner(self.deps, turn, options, collect)
        await runner.run(user)
        audio = b"".join(c.data for c in chunks)
        fmt = audio_pb2.AudioFormat()
        if chunks:
            fmt.CopyFrom(chunks[0].format)
        if wanted == audio_pb2.AUDIO_ENCODING_WAV and chunks:
            audio = wav_bytes(audio, fmt.sample_rate_hz or 22050)
            fmt.encoding = audio_pb2.AUDIO_ENCODING_WAV
        return assistant_pb2.ProcessTurnResponse(turn=turn, audio=audio, audio_format=fmt,
                                                 degraded=runner.degraded)

    async def GetConversation(self, request: assistant_pb2.GetConversationRequest,
                              context: aio.ServicerContext) -> assistant_pb2.GetConversationResponse:
        conversation = await self.deps.store.get(request.conversation_id)
        if conversation is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no conversation {request.conversation_id!r}")
        return assistant_pb2.GetConversationResponse(conversation=conversation)

    async def ListConversations(self, request: assistant_pb2.ListConversationsRequest,
                                context: aio.ServicerContext) -> assistant_pb2.ListConversationsResponse:
        if request.page_size < 0 or request.page_size > MAX_PAGE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be 0..{MAX_PAGE}")
        try:
            offset = int(request.page_token or "0")
            if offset < 0:
                raise ValueError
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this server gave out")
        limit = request.page_size or 50
        conversations, more = await self.deps.store.list(limit, offset)
        return assistant_pb2.ListConversationsResponse(conversations=conversations,
                                                       next_page_token=str(offset + limit) if more else "")

    async def DeleteConversation(self, request: assistant_pb2.DeleteConversationRequest,
                                 context: aio.ServicerContext) -> assistant_pb2.DeleteConversationResponse:
        if not await self.deps.store.delete(request.conversation_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no conversation {request.conversation_id!r}")
        return assistant_pb2.DeleteConversationResponse()
