"""Audio decoding shared by the services: any container PyAV reads, or raw PCM16,
to 16 kHz mono float32 (what faster-whisper and Silero VAD take); WAV writing.
"""

from __future__ import annotations

import io
import struct
import wave

import av
import numpy as np

from voicebus.v1 import audio_pb2

WHISPER_RATE = 16_000
SUPPORTED_PCM_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)


class AudioError(ValueError):
    """Audio that cannot be used; the message says why in words a person understands."""


def pcm16_to_float(data: bytes) -> np.ndarray:
    if len(data) % 2:
        data = data[:-1]
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Linear-interpolation resampling (speech-grade; enough for ASR and playback)."""
    if from_rate == to_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    duration = samples.size / from_rate
    n_out = max(1, int(round(duration * to_rate)))
    positions = np.linspace(0, samples.size - 1, n_out)
    return np.interp(positions, np.arange(samples.size), samples).astype(np.float32)


def check_pcm_rate(rate: int) -> None:
    if rate not in SUPPORTED_PCM_RATES:
        raise AudioError(f"unsupported sample rate {rate} Hz for PCM16; use one of "
                         + ", ".join(str(r) for r in SUPPORTED_PCM_RATES))


def decode_container(data: bytes, rate: int = WHISPER_RATE) -> np.ndarray:
    """Decode a whole file (WAV, WebM/Opus, Ogg, MP3, FLAC, ...) to mono float32 at `rate`."""
    if not data:
        raise AudioError("the audio is empty (0 bytes)")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioError("the file has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            pieces: list[np.ndarray] = []
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, EOFError) as exc:
        raise AudioError(f"the bytes are not audio in a format we can decode ({exc.__class__.__name__})") from None
    if not pieces:
        raise AudioError("the file holds no decodable audio (truncated or empty)")
    return np.concatenate(pieces).astype(np.float32, copy=False)


def decode_audio(data: bytes, encoding: int = audio_pb2.AUDIO_ENCODING_UNSPECIFIED,
                 sample_rate_hz: int = 0, rate: int = WHISPER_RATE) -> np.ndarray:
    """Decode bytes described by an `AudioEncoding` to mono float32 at `rate`."""
    if encoding == audio_pb2.AUDIO_ENCODING_PCM16:
        check_pcm_rate(sample_rate_hz)
        if not data:
            raise AudioError("the audio is empty (0 bytes)")
        return resample(pcm16_to_float(data), sample_rate_hz, rate)
    return decode_container(data, rate)


def wav_bytes(pcm16: bytes, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
    return buf.getvalue()


def streaming_wav_header(rate: int, channels: int = 1) -> bytes:
    """A WAV header with unknown length (0xFFFFFFFF), for audio streamed in pieces."""
    byte_rate = rate * channels * 2
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, byte_rate, channels * 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))
