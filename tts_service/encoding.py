"""Sentence audio to the bytes a client asked for (PyAV), one chunk per sentence.

What one chunk is, per encoding (also in tts.proto):
- PCM16: the sentence's samples, raw little-endian int16 mono at the stated rate.
- WAV: a complete WAV file holding the sentence (exact sizes in the header), so each
  chunk plays alone (e.g. `decodeAudioData` in a browser).
- MP3: a complete MP3 stream of the sentence (no ID3 tag, no Xing frame): each chunk
  plays alone, and the chunks of a response concatenate into one valid MP3.
- OGG_OPUS / WEBM_OPUS: one continuous container over the whole response: the first
  chunk starts with the container header, each chunk carries its sentence's Opus
  packets (padded with 60 ms of silence, so no speech waits in the encoder or muxer for
  the next sentence), and one last chunk (no sentence text) carries the container's
  closing bytes. The chunks concatenate into one valid file; appended in order to a
  MediaSource (WebM) they play.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from voicebus.audio import SUPPORTED_PCM_RATES, float_to_pcm16, wav_bytes
from voicebus.v1 import audio_pb2

PCM16 = audio_pb2.AUDIO_ENCODING_PCM16
WAV = audio_pb2.AUDIO_ENCODING_WAV
MP3 = audio_pb2.AUDIO_ENCODING_MP3
OGG_OPUS = audio_pb2.AUDIO_ENCODING_OGG_OPUS
WEBM_OPUS = audio_pb2.AUDIO_ENCODING_WEBM_OPUS

OPUS_RATES = (48_000, 24_000)
RATES = {PCM16: SUPPORTED_PCM_RATES, WAV: SUPPORTED_PCM_RATES, MP3: SUPPORTED_PCM_RATES,
         OGG_OPUS: OPUS_RATES, WEBM_OPUS: OPUS_RATES}
MP3_BIT_RATE = 64_000
OPUS_BIT_RATE = 32_000  # plenty for speech
OPUS_FRAME_SECONDS = 0.02


class UnsupportedFormat(ValueError):
    """An encoding or sample rate this server does not produce; the message says which ones it does."""


def check_format(encoding: int, sample_rate_hz: int) -> None:
    if encoding not in RATES:
        known = (audio_pb2.AudioEncoding.Name(encoding) if encoding in audio_pb2.AudioEncoding.values()
                 else str(encoding))
        raise UnsupportedFormat(
            f"encoding {known} is not produced here; use one of "
            + ", ".join(audio_pb2.AudioEncoding.Name(e) for e in RATES))
    if sample_rate_hz and sample_rate_hz not in RATES[encoding]:
        raise UnsupportedFormat(
            f"sample rate {sample_rate_hz} Hz is not supported for {audio_pb2.AudioEncoding.Name(encoding)}; "
            "use 0 (default) or one of " + ", ".join(str(r) for r in RATES[encoding]))


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling (libswresample) of a whole sentence."""
    if from_rate == to_rate or samples.size == 0:
        return samples
    frame = _frame(samples, from_rate)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)


def _frame(samples: np.ndarray, rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1),
                                       format="flt", layout="mono")
    frame.sample_rate = rate
    return frame


class _Sink:
    """A write-only, non-seekable file for PyAV: muxers then write streamable output."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def _mp3(samples: np.ndarray, rate: int) -> bytes:
    sink = _Sink()
    with av.open(sink, mode="w", format="mp3", options={"write_xing": "0", "id3v2_version": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        stream.bit_rate = MP3_BIT_RATE
        container.mux(stream.encode(_frame(samples, rate)))
        container.mux(stream.encode(None))
    return sink.take()


class _OpusStream:
    """One Ogg or WebM file across all sentences of a response, written as it grows."""

    def __init__(self, container_format: str, rate: int) -> None:
        self.rate = rate
        self._sink = _Sink()
        # WebM: a cluster per packet so nothing waits in the muxer; no seeking (live).
        options = {"live": "1", "cluster_time_limit": "0"} if container_format == "webm" else {"page_duration": "20000"}
        self._container = av.open(self._sink, mode="w", format=container_format, options=options)
        self._stream = self._container.add_stream("libopus", rate=rate, layout="mono")
        self._stream.bit_rate = OPUS_BIT_RATE
        self._frame_samples = int(rate * OPUS_FRAME_SECONDS)
        self._pts = 0

    def encode(self, samples: np.ndarray) -> tuple[bytes, int]:
        """The bytes that now complete the file, and the samples they hold (speech + padding)."""
        # Whole frames plus three of silence: what the encoder (look-ahead) and the WebM muxer
        # hold back until the next sentence is then silence only.
        pad = (-samples.size) % self._frame_samples + 3 * self._frame_samples
        padded = np.concatenate([samples, np.zeros(pad, dtype=np.float32)])
        frame = _frame(padded, self.rate)
        frame.pts, frame.time_base = self._pts, Fraction(1, self.rate)
        self._pts += padded.size
        self._container.mux(self._stream.encode(frame))
        return self._sink.take(), padded.size

    def finish(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._sink.take()


class ResponseEncoder:
    """Encodes the sentences of one response stream, in order, at one output rate."""

    def __init__(self, encoding: int, rate: int) -> None:
        self.encoding, self.rate = encoding, rate
        self._opus: _OpusStream | None = None

    def encode(self, samples: np.ndarray, from_rate: int) -> tuple[bytes, float]:
        """One sentence → (chunk bytes, seconds of audio in the chunk)."""
        samples = resample(samples, from_rate, self.rate)
        if self.encoding in (OGG_OPUS, WEBM_OPUS):
            if self._opus is None:
                self._opus = _OpusStream("ogg" if self.encoding == OGG_OPUS else "webm", self.rate)
            data, count = self._opus.encode(samples)
            return data, count / self.rate
        seconds = samples.size / self.rate
        if self.encoding == MP3:
            return _mp3(samples, self.rate), seconds
        pcm = float_to_pcm16(samples)
        return (wav_bytes(pcm, self.rate) if self.encoding == WAV else pcm), seconds

    def finish(self) -> bytes:
        """Closing bytes of a container that spans the response (Ogg/WebM), else b""."""
        if self._opus is None:
            return b""
        opus, self._opus = self._opus, None
        return opus.finish()
