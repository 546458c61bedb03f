"""The work of one turn: the user's words in, a spoken answer out.

The LLM's deltas go to the client and, at the same time, into one TTS text stream that
speaks each sentence as soon as it is complete, so the first audio plays while the LLM is
still writing. The TTS stream is opened when there is text to speak, not when the turn
starts: a TTS slot held idle while the LLM thinks was what left the 9th concurrent turn
without a voice. Cancelling the turn's task (its handle's `interrupt`) cancels both calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc

from orchestrator.clients import ReplayableStream, StageError, llm_generate, tts_stream
from orchestrator.intelligible import unintelligible
from orchestrator.phrases import APOLOGY, PLEASE_REPEAT, phrase
from orchestrator.turn import TurnHandle
from voicebus.language import answer_language, voice_language
from voicebus.text import SentenceSplitter
from voicebus.v1 import assistant_pb2, audio_pb2, common_pb2, llm_pb2, tts_pb2


def _note(handle: TurnHandle) -> Callable[[str], None]:
    """Failovers between instances go on the turn's record, like provider fallbacks."""
    return lambda text: handle.recorder.note_fallback(handle, text)


class Speaker:
    """The answer's voice: one TTS text stream, opened at the first text to speak."""

    def __init__(self, handle: TurnHandle) -> None:
        self.handle = handle
        self.stream: ReplayableStream | None = None
        self.player: asyncio.Task[None] | None = None
        self.first_piece_at = 0.0
        self._splitter = SentenceSplitter()

    def _config(self) -> tts_pb2.SynthesisConfig:
        options, turn = self.handle.options, self.handle.turn
        fmt = options.output_format
        return tts_pb2.SynthesisConfig(engine=options.tts_engine, voice=options.voice,
                                       language_code=voice_language(turn.language_code),
                                       encoding=fmt.encoding or audio_pb2.AUDIO_ENCODING_PCM16,
                                       sample_rate_hz=fmt.sample_rate_hz)

    def say(self, text: str) -> None:
        if self.stream is None:
            settings = self.handle.recorder.deps.settings
            self.stream = tts_stream(self.handle.recorder.deps.registry, self._config(), self.handle.turn_id,
                                     settings.tts_timeout_seconds, note=_note(self.handle))
            self.player = asyncio.create_task(self._play(self.stream))
        if not self.first_piece_at and self._splitter.push(text):
            self.first_piece_at = time.monotonic()
        self.stream.send(tts_pb2.StreamingSynthesizeRequest(text=text))

    async def _play(self, stream: ReplayableStream) -> None:
        handle, recorder = self.handle, self.handle.recorder
        try:
            async for reply in stream.responses():
                sentence = reply.sentence
                if not handle.first_audio_at:
                    if self.first_piece_at:
                        handle.turn.timings.tts_first_chunk_seconds = time.monotonic() - self.first_piece_at
                    recorder.first_audio(handle)
                handle.turn.providers.tts_engine = sentence.engine
                handle.turn.providers.tts_voice = sentence.voice
                handle.send(audio=assistant_pb2.AudioOutput(chunk=sentence.audio, sentence_index=sentence.sentence_index,
                                                            text=sentence.text))
        except StageError as exc:
            if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # said as a status too, not only as text-only
                handle.send(error=common_pb2.StreamError(code=exc.code.value[0], stage=common_pb2.STAGE_TTS,
                                                         message=f"speech is at capacity: {exc.message[:200]}",
                                                         retryable=True))
            recorder.degraded(handle, common_pb2.STAGE_TTS, f"no speech, text only ({exc.message[:200]})")

    async def finish(self) -> None:
        """All text is in: wait until its audio has gone out."""
        if self.stream is None or self.player is None:
            return
        if not self.first_piece_at:
            self.first_piece_at = time.monotonic()
        self.stream.close()
        await self.player

    async def stop(self) -> None:
        if self.player is not None and not self.player.done():
            self.player.cancel()
            if self.stream is not None:
                self.stream.cancel()
            await asyncio.gather(self.player, return_exceptions=True)


async def speak_phrase(handle: TurnHandle, text: str) -> None:
    """A fixed phrase (please-repeat, apology): its text, and its audio unless audio is off."""
    handle.send(response_delta=assistant_pb2.ResponseDelta(text=text))
    handle.sent_text.append(text)
    if not handle.options.synthesize_audio:
        return
    speaker = Speaker(handle)
    try:
        speaker.say(text)
        await speaker.finish()
    finally:
        await speaker.stop()


async def answer(handle: TurnHandle, request: llm_pb2.GenerateRequest) -> None:
    """Stream the LLM's answer to the client and, sentence by sentence, to the TTS."""
    recorder, turn = handle.recorder, handle.turn
    settings, registry = recorder.deps.settings, recorder.deps.registry
    speaker = Speaker(handle) if handle.options.synthesize_audio else None
    started = time.monotonic()
    try:
        async for reply in llm_generate(registry, request, settings.llm_timeout_seconds, note=_note(handle)):
            kind = reply.WhichOneof("response")
            if kind == "delta":
                if not handle.sent_text:
                    turn.timings.llm_first_token_seconds = time.monotonic() - started
                handle.sent_text.append(reply.delta.text)
                handle.send(response_delta=assistant_pb2.ResponseDelta(text=reply.delta.text))
                if speaker:
                    speaker.say(reply.delta.text)
            elif kind == "done":
                done = reply.done
                turn.providers.llm_provider, turn.providers.llm_model = done.provider, done.model
                turn.providers.fallbacks.extend(f"llm: {f.provider} skipped ({f.reason})" for f in done.fallbacks)
        turn.timings.llm_seconds = time.monotonic() - started
        recorder.response_completed(handle)
        if speaker:
            await speaker.finish()
    finally:
        if speaker:
            await speaker.stop()


async def run_turn(handle: TurnHandle) -> None:
    """The pipeline a turn's handle runs: words, then a spoken answer (or a please-repeat)."""
    recorder = handle.recorder
    settings, store = recorder.deps.settings, recorder.deps.store
    user = await handle.words()
    turn = handle.turn
    turn.user_text = user.text
    # The words decide (a typed "भारत की राजधानी क्या है?" is Hindi, "aap kaise ho" romanised Hindi):
    # the stored turn, the LLM's language rule and the voice all follow it.
    turn.language_code = answer_language(user.language or handle.options.language_code, user.text) or "en"
    turn.timings.stt_seconds = user.stt_seconds
    turn.providers.stt_model = user.stt_model
    await recorder.words_known(handle, handle.seed)

    if user.source == "audio" and (user.no_speech or not user.text.strip() or unintelligible(
            user.text, turn.language_code, user.confidence, user.no_speech_probability,
            settings.min_transcript_confidence)):
        turn.outcome = assistant_pb2.TURN_OUTCOME_NO_SPEECH
        await speak_phrase(handle, phrase(PLEASE_REPEAT, turn.language_code))
        return

    history = await store.history(turn.conversation_id, settings.history_turns)
    request = llm_pb2.GenerateRequest(
        request_id=turn.turn_id, language_code=turn.language_code,
        messages=[*history, common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=user.text)])
    try:
        await answer(handle, request)
    except StageError as exc:
        if exc.service == "llm" and not handle.sent_text:  # nothing said yet: apologise aloud
            turn.providers.fallbacks.append(f"llm: failed ({exc.message[:200]})")
            await speak_phrase(handle, phrase(APOLOGY, turn.language_code))
        raise
