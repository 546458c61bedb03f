"""Audio and streaming helpers for the STT tests and bench/stt.py.

Speech is made locally with espeak-ng; other formats are encoded here with PyAV. WebM/Opus
is written to a non-seekable sink, as a browser's MediaRecorder produces it (no cues, no
sizes patched in afterwards), and sent in small pieces as MediaRecorder timeslices are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from helpers import espeak_wav
from voicebus.audio import decode_audio, float_to_pcm16
from voicebus.v1 import audio_pb2, stt_pb2

RATE = 16_000
SENTENCES = [
    "What is the weather like in Paris today",
    "Please turn on the lights in the kitchen",
    "How far is the moon from the earth",
    "Remind me to call my mother tomorrow morning",
    "Play some relaxing music in the living room",
    "What time does the train to London leave",
    "I would like to order a large pizza with mushrooms",
]


def speech(text: str, folder: Path, name: str | None = None) -> tuple[bytes, np.ndarray]:
    """(WAV bytes at espeak's 22.05 kHz, the same speech as 16 kHz float32)."""
    path = espeak_wav(text, folder / f"{name or abs(hash(text))}.wav")
    data = path.read_bytes()
    return data, decode_audio(data)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    return float_to_pcm16(samples)


class _Sink:
    """A write-only file: the muxer cannot seek back, like a live MediaRecorder stream."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)


def encode(samples: np.ndarray, fmt: str = "webm", codec: str = "libopus", rate: int = 48_000) -> bytes:
    """16 kHz float32 → a container (webm/ogg with Opus, mp3, flac) as bytes."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(np.frombuffer(float_to_pcm16(samples), "<i2")[None], format="s16",
                                       layout="mono")
    frame.sample_rate = RATE
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]])
    sink = _Sink()
    with av.open(sink, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        step = 960 if codec == "libopus" else 1152
        for i in range(0, pcm.size, step):
            piece = av.AudioFrame.from_ndarray(pcm[None, i:i + step], format="s16", layout="mono")
            piece.sample_rate, piece.pts = rate, i
            for packet in stream.encode(piece):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return b"".join(sink.parts)


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def pcm_chunks(samples: np.ndarray, seconds: float = 0.1) -> list[bytes]:
    return split(pcm16(samples), int(seconds * RATE) * 2)


@dataclass
class StreamRun:
    """What one StreamingTranscribe call returned, with arrival times (monotonic)."""
    responses: list[tuple[float, stt_pb2.StreamingTranscribeResponse]] = field(default_factory=list)
    half_closed_at: float | None = None
    last_sent_at: float = 0.0
    sent_at: list[float] = field(default_factory=list)

    def kinds(self) -> list[str]:
        """"started", "interim", "end", "final" in order of arrival."""
        names = {stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED: "started", stt_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE: "end"}
        out = []
        for _, r in self.responses:
            if r.HasField("event"):
                out.append(names[r.event.type])
            else:
                out.append("final" if r.result.is_final else "interim")
        return out

    def finals(self) -> list[stt_pb2.StreamingRecognitionResult]:
        return [r.result for _, r in self.responses if r.HasField("result") and r.result.is_final]

    def interims(self) -> list[stt_pb2.StreamingRecognitionResult]:
        return [r.result for _, r in self.responses if r.HasField("result") and not r.result.is_final]

    def first_time(self, kind: str) -> float:
        return next(t for (t, _), k in zip(self.responses, self.kinds()) if k == kind)


def pcm_config(**kwargs: object) -> stt_pb2.RecognitionConfig:
    kwargs.setdefault("sample_rate_hz", RATE)
    return stt_pb2.RecognitionConfig(encoding=audio_pb2.AUDIO_ENCODING_PCM16, **kwargs)


def run_stream(stub: object, config: stt_pb2.RecognitionConfig | None, chunks: Sequence[bytes],
               interval: float = 0.05, hold_until: Callable[[StreamRun], bool] | None = None,
               hold_timeout: float = 20.0, timeout: float = 60.0,
               extra: Sequence[stt_pb2.StreamingTranscribeRequest] = ()) -> StreamRun:
    """Send config, then chunks `interval` seconds apart; before half-closing, wait until
    `hold_until(run)` is true (to prove the server acts without the client closing)."""
    run = StreamRun()
    changed = threading.Condition()

    def requests() -> Iterator[stt_pb2.StreamingTranscribeRequest]:
        if config is not None:
            yield stt_pb2.StreamingTranscribeRequest(config=config, request_id="test")
        yield from extra
        for chunk in chunks:
            yield stt_pb2.StreamingTranscribeRequest(audio=chunk)
            run.last_sent_at = time.monotonic()
            run.sent_at.append(run.last_sent_at)
            if interval:
                time.sleep(interval)
        if hold_until is not None:
            with changed:
                changed.wait_for(lambda: hold_until(run), timeout=hold_timeout)
        run.half_closed_at = time.monotonic()

    for response in stub.StreamingTranscribe(requests(), timeout=timeout):  # type: ignore[attr-defined]
        with changed:
            run.responses.append((time.monotonic(), response))
            changed.notify_all()
    return run
