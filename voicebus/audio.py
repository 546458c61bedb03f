"""Audio decoding shared by the services: any container PyAV reads, or raw PCM16,
to 16 kHz mono float32 (what faster-whisper and Silero VAD take); WAV writing.

Decoding is bounded before it starts: a header's sample rate must be a real one (8 to
192 kHz; a WAV claiming 1 Hz turned every input byte into 8,000 output samples, about
55 MB of RAM per KB uploaded) and, given `max_seconds`, the duration a header announces
or a decoder produces is checked as the samples come, so memory stays within
`max_seconds` of 16 kHz float32 whatever the file says about itself.
"""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass

import av
import numpy as np

from voicebus.v1 import audio_pb2

WHISPER_RATE = 16_000
SUPPORTED_PCM_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
# Sample rates a container may declare: telephone speech to studio masters. Outside
# this a header is broken or hostile, never a recording.
MIN_CONTAINER_RATE, MAX_CONTAINER_RATE = 8_000, 192_000
MAX_WAV_CHUNKS = 64


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


def check_container_rate(rate: int) -> None:
    if not MIN_CONTAINER_RATE <= rate <= MAX_CONTAINER_RATE:
        raise AudioError(f"the audio declares a sample rate of {rate} Hz; accepted rates are "
                         f"{MIN_CONTAINER_RATE} to {MAX_CONTAINER_RATE} Hz")


def check_audio_stream(stream: av.audio.stream.AudioStream) -> None:
    """The track can be decoded, at a real sample rate (read from the header, before decoding)."""
    if stream.codec_context is None:  # FFmpeg found the track but no decoder for it
        raise AudioError("the audio track uses a codec we cannot decode")
    check_container_rate(stream.codec_context.sample_rate)


def too_long(seconds: float, max_seconds: float) -> AudioError:
    return AudioError(f"the audio lasts {seconds:.0f} s; the limit is {max_seconds:g} s")


@dataclass(frozen=True)
class WavHeader:
    """What a RIFF/WAVE header says; `data_size` is None when it announces no length."""
    sample_rate: int
    byte_rate: int
    data_size: int | None
    data_present: int  # bytes of the data chunk actually in the file


def read_wav_header(data: bytes) -> WavHeader | None:
    """The header of a WAV file, or None for anything else (or a WAV without fmt/data)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, rate, byte_rate = 12, 0, 0
    # A few chunks (fmt, LIST, fact...) precede the data in real files; a file of a million
    # empty chunks is left to FFmpeg, in its thread, rather than walked here in the event loop.
    for _ in range(MAX_WAV_CHUNKS):
        if offset + 8 > len(data):
            break
        chunk, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
        if chunk == b"fmt " and offset + 20 <= len(data):
            rate, byte_rate = struct.unpack("<II", data[offset + 12:offset + 20])
        if chunk == b"data":
            return WavHeader(rate, byte_rate, None if size in (0, 0xFFFFFFFF) else size, len(data) - offset - 8)
        offset += 8 + size + (size & 1)
    return None


def check_wav_header(data: bytes, max_seconds: float | None = None) -> None:
    """Refuse a WAV whose header is absurd, too long or cut short, before decoding a byte."""
    header = read_wav_header(data)
    if header is None or not header.sample_rate:
        return  # not a WAV we can read ahead of FFmpeg: the decoder's own checks apply
    check_container_rate(header.sample_rate)
    if not header.byte_rate:
        return
    announced = (header.data_size if header.data_size is not None else header.data_present) / header.byte_rate
    if max_seconds is not None and announced > max_seconds:
        raise too_long(announced, max_seconds)
    if header.data_size is not None and header.data_size > header.data_present + 1:
        raise AudioError(f"the WAV file is truncated: its header announces {announced:.2f} s of audio "
                         f"but only {header.data_present / header.byte_rate:.2f} s are there")


def decode_container(data: bytes, rate: int = WHISPER_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode a whole file (WAV, WebM/Opus, Ogg, MP3, FLAC, ...) to mono float32 at `rate`;
    more than `max_seconds` of audio stops the decoding with an AudioError."""
    if not data:
        raise AudioError("the audio is empty (0 bytes)")
    max_samples = None if max_seconds is None else int(max_seconds * rate) + rate  # 1 s of resampler slack
    decoded = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioError("the file has no audio stream")
            check_audio_stream(container.streams.audio[0])
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            pieces: list[np.ndarray] = []
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    decoded += pieces[-1].size
                if max_samples is not None and decoded > max_samples:
                    raise too_long(decoded / rate, max_seconds or 0)
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
                 sample_rate_hz: int = 0, rate: int = WHISPER_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode bytes described by an `AudioEncoding` to mono float32 at `rate`, refusing
    (AudioError) more than `max_seconds` before the samples are made where it can."""
    if encoding == audio_pb2.AUDIO_ENCODING_PCM16:
        check_pcm_rate(sample_rate_hz)
        if not data:
            raise AudioError("the audio is empty (0 bytes)")
        seconds = len(data) / 2 / sample_rate_hz
        if max_seconds is not None and seconds > max_seconds:
            raise too_long(seconds, max_seconds)
        return resample(pcm16_to_float(data), sample_rate_hz, rate)
    check_wav_header(data, max_seconds)
    return decode_container(data, rate, max_seconds)


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
