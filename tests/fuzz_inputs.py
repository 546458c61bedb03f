"""Seeded generators of hostile input for tests/test_fuzz.py: JSON values, REST requests,
WebSocket messages and protobuf messages (random fields from the descriptors, then,
sometimes, corrupted bytes). Everything comes from one `random.Random`, so a failure is
reproduced by its seed and case number.
"""

from __future__ import annotations

import base64
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

import hostile_audio

# Strings a client might send. Protobuf cannot carry a lone surrogate, so SURROGATES are
# only for JSON (REST and WebSocket), where they used to be an unhandled error.
STRINGS = [
    "", " ", "a", "hi", "Say hi.", "Hello there, how are you?", "\x00", "ab\x00cd", "\n\r\t", "\u202eevil",
    "\U0001F600" * 50, "नमस्ते, आप कैसे हैं?", "'; DROP TABLE turns; --", "../../etc/passwd", "%s%n%x",
    "<script>alert(1)</script>", "a" * 129, "a" * 2_001, "a" * 8_001, "a" * 17_000, "-1", "0", "1e400",
    "1180591620717411303424", "NaN", "null", "en", "hi", "pt-BR", "en_US", "pcm16", "wav", "webm", "auto",
    "piper", "pyttsx3", "\ufffd", "\U0010ffff",
]
SURROGATES = ["\ud800", "x\udfff", "\udc00abc", "\ud83d"]
# The ones that broke something before (issue 12): drawn as often as all the others together.
NASTY = ["a" * 17_000, "a" * 8_001, "1180591620717411303424", "-1", "\x00", "../x", "\U0001F600" * 50]
NUMBERS: list[Any] = [0, 1, -1, 8_000, 16_000, 48_000, 2**31, 2**63, -(2**63), 10**30, 0.5, -0.0, 1e308,
                      True, False, None, float("nan"), float("inf")]
KEYS = ["type", "text", "audio_base64", "history", "conversation_id", "language", "audio_format",
        "sample_rate", "synthesize_audio", "format", "output_format", "output_sample_rate", "voice",
        "tts_engine", "interim_results", "end_of_utterance_silence_ms", "traceparent", "role", "content"]


def small_wav(seconds: float = 0.5, rate: int = 16_000) -> bytes:
    return hostile_audio.wav(rate, bytes(int(rate * seconds) * 2))


def audio_bytes(rng: random.Random) -> bytes:
    """Audio that is broken, lying or absurd, now and then a plain short silence."""
    choice = rng.randrange(7)
    if choice == 0:
        return hostile_audio.wav(rng.choice([0, 1, 7_999, 8_000, 16_000, 192_000, 192_001, 2**32 - 1]),
                                 bytes(rng.randrange(0, 16_000)), channels=rng.choice([0, 1, 2, 255, 65_535]),
                                 bits=rng.choice([0, 1, 8, 16, 24, 32, 255]),
                                 data_size=rng.choice([None, None, 0, 2**32 - 1, 10**9]),
                                 junk_chunks=rng.choice([0, 0, 3, 100]))
    if choice == 1:
        magic = rng.choice([b"RIFF", b"OggS", b"fLaC", b"ID3", b"\x1a\x45\xdf\xa3", b"\xff\xfb", b"RF64"])
        return magic + rng.randbytes(rng.randrange(0, 20_000))
    if choice == 2:
        return mutate_bytes(rng, small_wav())
    if choice == 3:
        return small_wav(rng.choice([0.1, 0.5, 1.0]))
    if choice == 4:
        return rng.randbytes(rng.randrange(0, 5_000))
    if choice == 5:
        return small_wav()[:rng.randrange(0, 60)]
    return b""


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Flip, insert, delete, truncate or repeat a little of `data`."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data and at < len(data):
            data[at] = rng.randrange(256)
        elif op == 1:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 2:
            del data[at:at + rng.randint(1, 8)]
        elif op == 3:
            del data[at:]
        else:
            data[at:at] = data[at:at + rng.randint(1, 64)] * rng.randint(1, 8)
    return bytes(data)


def text_value(rng: random.Random, surrogates: bool = False) -> str:
    roll = rng.random()
    if surrogates and roll < 0.2:
        return rng.choice(SURROGATES)
    return rng.choice(NASTY) if roll < 0.6 else rng.choice(STRINGS)


def json_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(10)
    if choice < 4:
        return text_value(rng, surrogates=True)
    if choice < 7:
        return rng.choice(NUMBERS)
    if choice < 8 and depth < 3:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice < 9 and depth < 3:
        return {rng.choice(KEYS + SURROGATES): json_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return rng.choice(["", "hi", None, 0])


def json_text(rng: random.Random, value: Any) -> str:
    """JSON as a client may spell it: sometimes with NaN or cut short, or nested too deep."""
    text = json.dumps(value)  # writes lone surrogates as \\ud800 escapes, NaN as NaN
    roll = rng.random()
    if roll < 0.1:
        return mutate_bytes(rng, text.encode()).decode("utf-8", "replace")
    if roll < 0.13:
        return "[" * 50_000 + "]" * 50_000
    if roll < 0.16:
        return text[:-1] + ', "sample_rate": ' + "9" * 5_000 + "}" if text.endswith("}") else text
    return text


def history(rng: random.Random) -> Any:
    if rng.random() < 0.2:
        return json_value(rng)
    count = rng.choice([0, 1, 2, 5, 101, 10_000 if rng.random() < 0.2 else 3])
    return [{"role": rng.choice(["user", "assistant", "system"] * 4 + ["robot", "", None]),
             "content": text_value(rng, surrogates=True)} for _ in range(count)]


@dataclass
class HttpCase:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None

    def describe(self) -> str:
        body = (self.content or b"")[:120]
        return f"{self.method} {self.path} params={self.params} files={bool(self.files)} body={body!r}"


RATES = [8_000, 16_000, 22_050, 48_000] * 3 + [0, 1, 12_345, 2**31 - 1, -1]
FORMATS = ["", "auto", "pcm16", "wav", "webm", "ogg", "mp3", "flac", "pcm", "aiff", "\x00"]


def _typed_or_random(rng: random.Random, typed: Any) -> Any:
    """Mostly a value of the field's type (hostile, but it passes the schema and goes
    deeper), sometimes anything at all."""
    return typed if rng.random() < 0.9 else json_value(rng)


def _chat(rng: random.Random) -> HttpCase:
    body: dict[str, Any] = {}
    for key in rng.sample(["text", "audio_base64", "history", "conversation_id", "language", "audio_format",
                           "sample_rate", "extra"], rng.randint(1, 5)):
        if key == "history":
            body[key] = history(rng)
        elif key == "audio_base64":
            body[key] = rng.choice([base64.b64encode(audio_bytes(rng)).decode()] * 4 + ["not*base64", 5])
        elif key == "sample_rate":
            body[key] = _typed_or_random(rng, rng.choice(RATES))
        elif key == "audio_format":
            body[key] = _typed_or_random(rng, rng.choice(FORMATS))
        else:
            body[key] = _typed_or_random(rng, text_value(rng, surrogates=True))
    if "text" not in body and "audio_base64" not in body and rng.random() < 0.7:
        body["text"] = text_value(rng, surrogates=True)
    body["synthesize_audio"] = _typed_or_random(rng, rng.random() < 0.15)
    return HttpCase("POST", "/api/chat", headers={"Content-Type": "application/json"},
                    content=json_text(rng, body).encode("utf-8", "surrogatepass"))


def _query_value(rng: random.Random) -> str:
    return str(text_value(rng) if rng.random() < 0.7 else rng.choice(NUMBERS))[:4_000]


def _process_audio(rng: random.Random) -> HttpCase:
    params = {key: _query_value(rng) for key in rng.sample(["conversation_id", "language"], rng.randint(0, 2))}
    if rng.random() < 0.3:
        params["format"] = rng.choice(FORMATS)
        params["sample_rate"] = str(rng.choice(RATES))
    params["synthesize_audio"] = rng.choice(["false"] * 6 + ["true", "maybe"])
    audio = audio_bytes(rng)
    if rng.random() < 0.5:
        content_type = rng.choice(["audio/wav"] * 4 + ["audio/webm", "application/octet-stream", "audio/L16",
                                   "text/plain", "application/json", "audio/x; charset=nonsense",
                                   "multipart/form-data"])
        return HttpCase("POST", "/api/process_audio", params, {"Content-Type": content_type}, content=audio)
    field_name = rng.choice(["file", "file", "audio", "note"])
    data = {key: _query_value(rng) for key in rng.sample(["conversation_id", "language"], rng.randint(0, 2))}
    return HttpCase("POST", "/api/process_audio", params, files={field_name: ("x.wav", audio, "audio/wav")}, data=data)


def _conversations(rng: random.Random) -> HttpCase:
    if rng.random() < 0.4:
        params = {"page_size": str(rng.choice([1, 50, 500, 0, 501, -1])) if rng.random() < 0.8 else _query_value(rng),
                  "page_token": _query_value(rng)}
        return HttpCase("GET", "/api/conversations", {k: v for k, v in params.items() if rng.random() < 0.7})
    conversation_id = quote(text_value(rng) or "x", safe="")
    return HttpCase(rng.choice(["GET", "DELETE"]), f"/api/conversations/{conversation_id}")


def http_case(rng: random.Random) -> HttpCase:
    case = rng.choices([_chat, _process_audio, _conversations], weights=[5, 3, 2])[0](rng)
    if rng.random() < 0.15:  # hostile headers the gateway reads
        case.headers["X-Request-ID"] = rng.choice(["-", "a" * 4_000, "../x", "x y", "%00"])
        case.headers["traceparent"] = rng.choice(["00-" + "f" * 32 + "-" + "0" * 16 + "-01", "garbage", "0" * 512])
    return case


WS_TYPES = ["start", "start", "text", "text", "end_of_audio", "interrupt", "audio_start", "ping", "dance", None]


def ws_message(rng: random.Random) -> str | bytes:
    """One WebSocket frame: mostly control messages with hostile fields, sometimes audio."""
    roll = rng.random()
    if roll < 0.25:
        return audio_bytes(rng)[:rng.choice([100, 4_000, 20_000])]
    if roll < 0.3:
        return rng.choice(["", "{", "not json", "[]", "5", '"start"'])
    message: dict[str, Any] = {"type": rng.choice(WS_TYPES + SURROGATES[:1])}
    for key in rng.sample(KEYS[1:], rng.randint(0, 4)):
        message[key] = json_value(rng)
    if message["type"] == "text" and rng.random() < 0.3:
        message["text"] = "Say hi."  # now and then a real turn, so messages also arrive mid-turn
    if message["type"] == "start" and rng.random() < 0.5:
        message["synthesize_audio"] = False
    return json_text(rng, message)


# ---- protobuf ------------------------------------------------------------------------------
_INT_EXTREMES = {
    FieldDescriptor.TYPE_INT32: [0, 1, -1, 16_000, 2**31 - 1, -(2**31)],
    FieldDescriptor.TYPE_INT64: [0, 1, -1, 2**63 - 1, -(2**63)],
    FieldDescriptor.TYPE_UINT32: [0, 1, 2**32 - 1],
    FieldDescriptor.TYPE_UINT64: [0, 1, 2**64 - 1],
}
_FLOATS = [0.0, -1.0, 0.25, 1.0, 4.0, 1e38, float("inf"), float("-inf"), math.nan]


def proto_value(rng: random.Random, fd: FieldDescriptor, overrides: dict[str, list[Any]], depth: int) -> Any:
    if fd.full_name in overrides:
        return rng.choice(overrides[fd.full_name])
    if fd.type == FieldDescriptor.TYPE_STRING:
        return text_value(rng)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return audio_bytes(rng)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice(_FLOATS)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return rng.choice([v.number for v in fd.enum_type.values] + [99, -1])
    return rng.choice(_INT_EXTREMES.get(fd.type, [0, 1, -1]))


def proto_message(rng: random.Random, cls: type[Message], overrides: dict[str, list[Any]],
                  depth: int = 0) -> Message:
    """A message of `cls` with random fields set to hostile values (recursively, not too deep)."""
    message = cls()
    descriptor: Descriptor = cls.DESCRIPTOR
    for fd in descriptor.fields:
        if rng.random() < 0.4:
            continue
        repeated = fd.is_repeated
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3 or fd.message_type.GetOptions().map_entry:
                continue
            child_cls = GetMessageClass(fd.message_type)
            if repeated:
                count = rng.choice([0, 1, 2, 3, 201 if rng.random() < 0.3 else 1])
                for _ in range(count):
                    getattr(message, fd.name).add().CopyFrom(proto_message(rng, child_cls, overrides, depth + 1))
            else:
                getattr(message, fd.name).CopyFrom(proto_message(rng, child_cls, overrides, depth + 1))
            continue
        try:
            if repeated:
                getattr(message, fd.name).extend(proto_value(rng, fd, overrides, depth) for _ in range(rng.randrange(3)))
            else:
                setattr(message, fd.name, proto_value(rng, fd, overrides, depth))
        except (ValueError, TypeError):
            pass  # a value this field cannot hold in Python: leave it unset
    return message


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def corrupt(rng: random.Random, cls: type[Message], data: bytes, truncate: bool = True) -> bytes:
    """Bytes that are no valid `cls`: invalid UTF-8 in one of its string fields (which no
    protobuf library will write), a field cut short, or (when allowed) random damage."""
    strings = [fd.number for fd in cls.DESCRIPTOR.fields if fd.type == FieldDescriptor.TYPE_STRING]
    roll = rng.randrange(3 if truncate else 2)
    if roll == 0 and strings:
        bad = rng.choice([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"a\x80b"])  # \xed\xa0\x80 = UTF-8 of \ud800
        return data + _varint(rng.choice(strings) << 3 | 2) + _varint(len(bad)) + bad
    if roll in (0, 1):
        return data + rng.choice([b"\x12\x80", b"\x0a\xff\xff\xff\xff\x0f", b"\x08", b"\xff\xff\xff"])
    return mutate_bytes(rng, data)
