"""What a client may send the Assistant API, checked once for Converse and ProcessTurn.

Every check raises one neutral `InputError` (a gRPC code and words); each entry point maps it
to its own way of saying no (a stream status, an error event, an aborted call). The numbers
are the gateway's (web_gateway/limits.py) so that a client gets the same answer either way:
- conversation ids: 1-128 characters of A-Z a-z 0-9 _ - (we make 32 hex digits); any other
  id cannot name a conversation: NOT_FOUND;
- language codes: at most 35 characters of A-Z a-z 0-9 -; voice/engine names at most 100;
- seeded history: at most 100 messages of at most `max_history_message_chars` each (the LLM's
  limit per message; a longer one used to break every later turn of its conversation);
- page tokens: our offsets, at most 9 digits.
"""

from __future__ import annotations

import re

import grpc

from orchestrator.settings import OrchestratorSettings
from voicebus.audio import SUPPORTED_PCM_RATES
from voicebus.v1 import assistant_pb2, audio_pb2, common_pb2

CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
LANGUAGE = re.compile(r"[A-Za-z0-9-]{0,35}")
NAME_MAX_CHARS = 100
HISTORY_MAX_MESSAGES = 100
PAGE_TOKEN = re.compile(r"[0-9]{0,9}")


class InputError(Exception):
    """The client's request cannot be served as sent; `code` says how, the message says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> InputError:
    return InputError(grpc.StatusCode.INVALID_ARGUMENT, message)


def shown(value: str, limit: int = 40) -> str:
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def check_conversation_id(conversation_id: str) -> None:
    """An id we could not have made names no conversation (checked before any lookup)."""
    if conversation_id and not CONVERSATION_ID.fullmatch(conversation_id):
        raise InputError(grpc.StatusCode.NOT_FOUND, f"no conversation {shown(conversation_id)}")


def check_options(options: assistant_pb2.TurnOptions) -> None:
    if not LANGUAGE.fullmatch(options.language_code):
        raise invalid(f"language_code {shown(options.language_code)} is not a language tag "
                      "(at most 35 letters, digits and '-', e.g. 'en' or 'hi-IN')")
    for name in ("voice", "tts_engine"):
        if len(getattr(options, name)) > NAME_MAX_CHARS:
            raise invalid(f"{name} is longer than {NAME_MAX_CHARS} characters")


def check_input_format(fmt: audio_pb2.AudioFormat) -> None:
    if fmt.encoding == audio_pb2.AUDIO_ENCODING_PCM16 and fmt.sample_rate_hz not in SUPPORTED_PCM_RATES:
        raise invalid(f"PCM16 input needs a sample_rate_hz of {', '.join(map(str, SUPPORTED_PCM_RATES))}; "
                      f"got {fmt.sample_rate_hz}")


def check_text(text: str, settings: OrchestratorSettings) -> str:
    """The typed turn, stripped; empty or over the limit is refused."""
    text = text.strip()
    if not text:
        raise invalid("empty text")
    if len(text) > settings.max_text_chars:
        raise invalid(f"text is {len(text)} characters; the limit is {settings.max_text_chars}")
    return text


def check_audio(audio: bytes, settings: OrchestratorSettings) -> None:
    if not audio:
        raise invalid("the audio is empty (0 bytes)")
    if len(audio) > settings.max_audio_bytes:
        raise invalid(f"audio is {len(audio) / 1024 / 1024:.1f} MB; the limit is {settings.max_audio_mb:g} MB")


def check_history(history: list[common_pb2.ChatMessage], settings: OrchestratorSettings) -> None:
    if len(history) > HISTORY_MAX_MESSAGES:
        raise invalid(f"history has {len(history)} messages; the limit is {HISTORY_MAX_MESSAGES}")
    for i, message in enumerate(history):
        if message.role not in (common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_SYSTEM):
            raise invalid(f"history[{i}] has no role (user, assistant or system)")
        if len(message.content) > settings.max_history_message_chars:
            raise invalid(f"history[{i}] is {len(message.content)} characters; the limit is "
                          f"{settings.max_history_message_chars}")


def page_offset(page_token: str) -> int:
    if not PAGE_TOKEN.fullmatch(page_token):
        raise invalid("page_token is not one this server gave out")
    return int(page_token or "0")


def check_process_turn(request: assistant_pb2.ProcessTurnRequest, settings: OrchestratorSettings) -> None:
    """Everything about a ProcessTurn request that can be judged without the store."""
    check_conversation_id(request.conversation_id)
    kind = request.WhichOneof("input")
    if kind is None:
        raise invalid("send audio or text")
    if kind == "text":
        check_text(request.text, settings)
    else:
        check_audio(request.audio, settings)
    check_input_format(request.audio_format)
    check_options(request.options)
    check_history(list(request.history), settings)


def check_converse_config(config: assistant_pb2.ConverseConfig) -> None:
    check_conversation_id(config.conversation_id)
    check_input_format(config.input_format)
    check_options(config.options)
    if not 0 <= config.end_of_utterance_silence_ms <= 10_000:
        raise invalid("end_of_utterance_silence_ms must be 0..10000")
