"""Between the gateway's JSON and the Assistant API's protobuf messages."""

from __future__ import annotations

from typing import Any

from tts_service.encoding import RATES as TTS_RATES
from voicebus.names import label
from voicebus.v1 import assistant_pb2, audio_pb2, common_pb2

from web_gateway.errors import ApiError

# Names a client may give for its audio format (`format` in the WS start message, or
# the `format` query parameter of /api/process_audio).
FORMAT_NAMES: dict[str, int] = {
    "": audio_pb2.AUDIO_ENCODING_UNSPECIFIED,
    "auto": audio_pb2.AUDIO_ENCODING_UNSPECIFIED,
    "pcm16": audio_pb2.AUDIO_ENCODING_PCM16,
    "wav": audio_pb2.AUDIO_ENCODING_WAV,
    "mp3": audio_pb2.AUDIO_ENCODING_MP3,
    "ogg": audio_pb2.AUDIO_ENCODING_OGG_OPUS,
    "webm": audio_pb2.AUDIO_ENCODING_WEBM_OPUS,
    "flac": audio_pb2.AUDIO_ENCODING_FLAC,
}

MIME_TYPES: dict[int, str] = {
    audio_pb2.AUDIO_ENCODING_PCM16: "audio/L16",
    audio_pb2.AUDIO_ENCODING_WAV: "audio/wav",
    audio_pb2.AUDIO_ENCODING_MP3: "audio/mpeg",
    audio_pb2.AUDIO_ENCODING_OGG_OPUS: "audio/ogg",
    audio_pb2.AUDIO_ENCODING_WEBM_OPUS: "audio/webm",
    audio_pb2.AUDIO_ENCODING_FLAC: "audio/flac",
}

ROLES = {"system": common_pb2.ROLE_SYSTEM, "user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT}


def stage_name(stage: int) -> str:
    """"llm" for STAGE_LLM, "unspecified" for a value this contract does not know."""
    return label(common_pb2.Stage, stage)


def outcome_name(outcome: int) -> str:
    return label(assistant_pb2.TurnOutcome, outcome)


def input_format(name: str | None, sample_rate: int | None) -> audio_pb2.AudioFormat:
    """The AudioFormat for a client's format name; PCM16 needs its sample rate."""
    key = str(name or "").strip().lower()
    if key in ("pcm", "s16le", "l16", "audio/l16"):
        key = "pcm16"
    if key not in FORMAT_NAMES:
        raise ApiError(422, "invalid_format", f"unknown audio format {name!r}; use one of: "
                       + ", ".join(k for k in FORMAT_NAMES if k))
    encoding = FORMAT_NAMES[key]
    if encoding == audio_pb2.AUDIO_ENCODING_PCM16 and not sample_rate:
        raise ApiError(422, "invalid_format", "format pcm16 needs its sample_rate (e.g. 16000)")
    return audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=int(sample_rate or 0), channels=1)


def output_format(name: str | None, sample_rate: int | None) -> audio_pb2.AudioFormat:
    """The answer's audio format; PCM16 unless asked otherwise, at the engine's rate unless given."""
    key = str(name or "pcm16").strip().lower()
    if key not in FORMAT_NAMES or key in ("", "auto"):
        raise ApiError(422, "invalid_format", f"unknown output format {name!r}; use pcm16, wav, mp3, ogg or flac")
    return audio_pb2.AudioFormat(encoding=FORMAT_NAMES[key], sample_rate_hz=int(sample_rate or 0), channels=1)


# What REST answers can be: one whole file (or raw samples) per answer, made by TTS's encoders.
ANSWER_FORMATS = ("mp3", "wav", "ogg", "pcm16")
# Accept header types that pick an answer format when the request names none.
ACCEPTED_AUDIO = {"audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/wav": "wav", "audio/wave": "wav",
                  "audio/x-wav": "wav", "audio/ogg": "ogg", "audio/l16": "pcm16"}


def accepted_format(accept: str | None) -> str | None:
    """The first answer format that an Accept header names (q=0 excluded), or None."""
    for part in str(accept or "").split(","):
        media, *params = (p.strip().lower() for p in part.split(";"))
        if any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            continue
        if media in ACCEPTED_AUDIO:
            return ACCEPTED_AUDIO[media]
    return None


def answer_format(name: str | None, sample_rate: int | None, accept: str | None = None) -> audio_pb2.AudioFormat:
    """A REST answer's audio format: `name` (mp3, wav, ogg, pcm16), else what `accept` asks for,
    else WAV; at `sample_rate`, or the voice's own rate when it is None or 0."""
    key = str(name or "").strip().lower() or accepted_format(accept) or "wav"
    if key not in ANSWER_FORMATS:
        raise ApiError(422, "invalid_format", f"unknown output_format {str(name)[:40]!r}; use one of "
                       + ", ".join(ANSWER_FORMATS))
    encoding = FORMAT_NAMES[key]
    rates = TTS_RATES[encoding]
    if sample_rate and sample_rate not in rates:
        raise ApiError(422, "invalid_format", f"output_sample_rate {sample_rate} is not one {key} is made at; "
                       "leave it out for the voice's own rate, or use one of " + ", ".join(map(str, sorted(rates))))
    return audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=int(sample_rate or 0), channels=1)


def audio_mime(fmt: audio_pb2.AudioFormat) -> str:
    """The MIME type of audio in `fmt`; raw samples say their rate (audio/L16;rate=24000)."""
    if fmt.encoding == audio_pb2.AUDIO_ENCODING_PCM16:
        return f"audio/L16;rate={fmt.sample_rate_hz}"
    return MIME_TYPES.get(fmt.encoding, "application/octet-stream")


def playback_mode(name: Any) -> bool:
    """`playback` of a WebSocket start: "realtime" (the page plays the audio as it arrives: turns
    last until it has played) or "none" (the default: a turn ends when its audio is sent)."""
    key = str(name or "none").strip().lower()
    if key not in ("realtime", "none"):
        raise ApiError(422, "invalid_start", f"unknown playback {str(name)[:40]!r}; use realtime or none")
    return key == "realtime"


# Leading bytes of the containers STT decodes (PyAV/FFmpeg). Used only to turn an
# upload that is plainly not audio (a PDF, a text file, JSON) into a quick 415; what
# passes is still decoded, and rejected with 422, by the services behind us.
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"RIFF"), (0, b"RF64"), (0, b"OggS"), (0, b"fLaC"), (0, b"ID3"), (0, b"\x1a\x45\xdf\xa3"),  # WAV, Ogg, FLAC, MP3, WebM/MKV
    (4, b"ftyp"), (0, b"FORM"), (0, b"caff"), (0, b"#!AMR"), (0, b".snd"),  # MP4/M4A/3GP, AIFF, CAF, AMR, AU
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),  # ASF (WMA)
)


def looks_like_audio(data: bytes) -> bool:
    if any(data[offset:offset + len(magic)] == magic for offset, magic in _SIGNATURES):
        return True
    # MPEG audio (MP3 without ID3) and ADTS AAC start with an 11/12-bit frame sync.
    return len(data) >= 2 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0


def history_messages(history: list[dict[str, str]] | None) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=ROLES[m["role"]], content=m["content"]) for m in history or ()]


def timings_json(t: assistant_pb2.StageTimings) -> dict[str, float]:
    return {"stt_seconds": round(t.stt_seconds, 4), "llm_first_token_seconds": round(t.llm_first_token_seconds, 4),
            "llm_seconds": round(t.llm_seconds, 4), "tts_first_chunk_seconds": round(t.tts_first_chunk_seconds, 4),
            "first_audio_seconds": round(t.first_audio_seconds, 4), "total_seconds": round(t.total_seconds, 4)}


def providers_json(p: assistant_pb2.TurnProviders) -> dict[str, Any]:
    return {"stt_model": p.stt_model, "llm_provider": p.llm_provider, "llm_model": p.llm_model,
            "tts_engine": p.tts_engine, "tts_voice": p.tts_voice, "fallbacks": list(p.fallbacks)}


def turn_json(turn: assistant_pb2.Turn) -> dict[str, Any]:
    return {
        "turn_id": turn.turn_id, "conversation_id": turn.conversation_id, "index": turn.index,
        "user_text": turn.user_text, "assistant_text": turn.assistant_text, "language": turn.language_code,
        "outcome": outcome_name(turn.outcome), "interrupted": turn.interrupted,
        "timings": timings_json(turn.timings),
        "providers": providers_json(turn.providers), "error_message": turn.error_message,
        "created_at": turn.created_at.ToJsonString() if turn.HasField("created_at") else None,
        "trace_id": turn.trace_id,
    }


def conversation_json(c: assistant_pb2.Conversation, with_turns: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "conversation_id": c.conversation_id, "title": c.title, "turn_count": c.turn_count,
        "created_at": c.created_at.ToJsonString() if c.HasField("created_at") else None,
        "updated_at": c.updated_at.ToJsonString() if c.HasField("updated_at") else None,
    }
    if with_turns:
        out["turns"] = [turn_json(t) for t in c.turns]
    return out


def degraded_json(d: assistant_pb2.StageDegraded) -> dict[str, str]:
    return {"stage": stage_name(d.stage), "message": d.message}
