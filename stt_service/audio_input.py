"""Streaming audio in: bytes as a client sends them (raw PCM16, or pieces of one container
stream such as WebM/Opus from a browser's MediaRecorder) out as 16 kHz float32 samples,
each 32 ms window with its Silero speech probability.

Container streams are decoded incrementally: PyAV reads from a file-like object that
blocks until the next piece arrives, so every byte is demuxed and decoded once, in the
order it came, with no re-decoding of a growing buffer. That blocking read needs its own
thread; the Silero VAD runs in the same thread, so the event loop only moves bytes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

from voicebus.audio import WHISPER_RATE, AudioError, check_audio_stream, check_pcm_rate, pcm16_to_float
from voicebus.v1 import audio_pb2

log = logging.getLogger(__name__)

WINDOW = 512  # Silero's window at 16 kHz: 32 ms
CONTAINER_FORMATS = {
    audio_pb2.AUDIO_ENCODING_UNSPECIFIED: None,  # let FFmpeg detect it
    audio_pb2.AUDIO_ENCODING_WAV: "wav",
    audio_pb2.AUDIO_ENCODING_MP3: "mp3",
    audio_pb2.AUDIO_ENCODING_OGG_OPUS: "ogg",
    audio_pb2.AUDIO_ENCODING_WEBM_OPUS: "matroska",
    audio_pb2.AUDIO_ENCODING_FLAC: "flac",
}

FORMAT_NAMES = {"matroska": "WebM", "ogg": "Ogg", "wav": "WAV", "mp3": "MP3", "flac": "FLAC"}
# `probesize`: bytes read to learn the stream's parameters (a small value starts decoding
# sooner). `formatprobesize`: bytes read to guess the container when the client named
# none. FFmpeg's default (1 MiB) meant a hands-free client streaming garbage heard
# nothing until it stopped; every container we accept is recognised within 2 KB
# (WebM, Ogg, MP3, FLAC, WAV from tests/stt_support.encode), so 8 KB is plenty.
OPEN_OPTIONS = {"probesize": "4096", "formatprobesize": "8192"}


@dataclass
class AudioBlock:
    samples: np.ndarray  # 16 kHz mono float32, a whole number of windows
    speech_probs: np.ndarray  # one per window
    arrival: float  # monotonic time the newest bytes behind these samples arrived


class End:
    """The input is over (the client half-closed) and everything was delivered."""


class SileroStream:
    """Silero VAD over an unbounded stream: the recurrent state and the 64-sample context
    carry over from call to call, so the probabilities equal those of one pass over the
    whole audio (faster_whisper.vad computes the same thing for a finished file)."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self._session = get_vad_model().session  # onnxruntime sessions are thread-safe
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(64, dtype=np.float32)
        self._rest = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray, flush: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Whole windows of (rest + samples) and their probabilities; keeps the remainder."""
        audio = np.concatenate([self._rest, samples]) if self._rest.size else samples
        if flush and audio.size % WINDOW:
            audio = np.pad(audio, (0, WINDOW - audio.size % WINDOW))
        whole = audio.size - audio.size % WINDOW
        self._rest = audio[whole:].copy()
        if not whole:
            return audio[:0], np.zeros(0, dtype=np.float32)
        windows = audio[:whole].reshape(-1, WINDOW)
        contexts = np.vstack([self._context[None], windows[:-1, -64:]])
        out, self._h, self._c = self._session.run(
            None, {"input": np.concatenate([contexts, windows], axis=1), "h": self._h, "c": self._c})
        self._context = windows[-1, -64:].copy()
        return audio[:whole], np.asarray(out, dtype=np.float32).reshape(-1)


class ByteFeed:
    """A read-only file for PyAV whose read() waits for the client's next bytes."""

    def __init__(self) -> None:
        self._pieces: queue.Queue[bytes | None] = queue.Queue()
        self._buffer = b""
        self.eof = False
        self.received = 0
        self.last_arrival = time.monotonic()

    def put(self, data: bytes | None) -> None:
        self._pieces.put(data)

    def read(self, size: int = -1) -> bytes:
        # Return what has arrived (at least one byte) rather than waiting for `size`:
        # FFmpeg copes with short reads, and the demuxer sees each piece at once.
        while not self._buffer and not self.eof:
            piece = self._pieces.get()
            if piece is None:
                self.eof = True
            else:
                self._buffer += piece
                self.received += len(piece)
                self.last_arrival = time.monotonic()
        size = len(self._buffer) if size is None or size < 0 else size
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


class StreamingAudioInput:
    """Feed bytes in with `feed`; `deliver` receives AudioBlock…, then End or an AudioError.

    `deliver` is called from this object's thread (wrap it with call_soon_threadsafe).
    """

    def __init__(self, encoding: int, sample_rate_hz: int, deliver: Callable[[object], None]) -> None:
        if encoding == audio_pb2.AUDIO_ENCODING_PCM16:
            check_pcm_rate(sample_rate_hz)
        elif encoding not in CONTAINER_FORMATS:
            raise AudioError(f"unknown audio encoding {encoding}")
        self.encoding, self.rate = encoding, sample_rate_hz
        self._deliver = deliver
        self._feed = ByteFeed()
        self._vad = SileroStream()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="stt-audio-in", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def feed(self, data: bytes) -> None:
        if data:
            self._feed.put(bytes(data))

    def close(self) -> None:
        """No more bytes will come: decode the rest, then deliver End."""
        self._feed.put(None)

    def stop(self) -> None:
        """Give up: the thread ends as soon as it can and delivers nothing more."""
        self._stopped = True
        self._feed.put(None)

    def _emit(self, samples: np.ndarray, flush: bool = False) -> None:
        windows, probs = self._vad.push(samples, flush)
        if windows.size and not self._stopped:
            self._deliver(AudioBlock(windows.astype(np.float32, copy=False), probs, self._feed.last_arrival))

    def _run(self) -> None:
        try:
            if self.encoding == audio_pb2.AUDIO_ENCODING_PCM16:
                self._run_pcm()
            else:
                self._run_container()
            self._emit(np.zeros(0, dtype=np.float32), flush=True)
            outcome: object = End()
        except AudioError as exc:
            outcome = exc
        except Exception:  # a decoder surprise must end this stream, not the service
            log.exception("audio input failed")
            outcome = AudioError("the audio stream could not be processed")
        if not self._stopped:
            self._deliver(outcome)

    def _run_pcm(self) -> None:
        resampler = (av.AudioResampler(format="flt", layout="mono", rate=WHISPER_RATE)
                     if self.rate != WHISPER_RATE else None)
        odd = b""
        while not self._stopped:
            data = self._feed.read()
            if not data:
                break
            data, odd = odd + data, b""
            if len(data) % 2:  # a sample split across two messages
                data, odd = data[:-1], data[-1:]
            samples = pcm16_to_float(data)
            if resampler is not None:
                samples = self._resample(resampler, samples, self.rate)
            self._emit(samples)
        if resampler is not None:
            self._emit(np.concatenate([f.to_ndarray().reshape(-1) for f in resampler.resample(None)] or
                                      [np.zeros(0, dtype=np.float32)]))

    @staticmethod
    def _resample(resampler: av.AudioResampler, samples: np.ndarray, rate: int) -> np.ndarray:
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def _run_container(self) -> None:
        fmt = CONTAINER_FORMATS[self.encoding]
        try:
            container = av.open(self._feed, mode="r", format=fmt, options=OPEN_OPTIONS)
        except (av.error.FFmpegError, ValueError, EOFError, OSError) as exc:
            if self._feed.received == 0:
                return  # no bytes at all: an empty stream, not a broken one
            what = "audio in a format we can decode" if fmt is None else f"{FORMAT_NAMES.get(fmt, fmt)} audio"
            raise AudioError(f"the streamed bytes are not {what} ({exc.__class__.__name__})") from None
        decoded = 0
        with container:
            if not container.streams.audio:
                raise AudioError("the streamed container has no audio track")
            check_audio_stream(container.streams.audio[0])
            resampler = av.AudioResampler(format="flt", layout="mono", rate=WHISPER_RATE)
            try:
                for frame in container.decode(audio=0):
                    if self._stopped:
                        return
                    for out in resampler.resample(frame):
                        samples = out.to_ndarray().reshape(-1)
                        decoded += samples.size
                        self._emit(samples)
            except (av.error.FFmpegError, ValueError, EOFError, OSError) as exc:
                # A stream cut off mid-frame when the client stops is normal; garbage is not.
                if not (self._feed.eof and decoded):
                    raise AudioError(f"the audio stream broke after {decoded / WHISPER_RATE:.2f} s: "
                                     f"undecodable data ({exc.__class__.__name__})") from None
            for out in resampler.resample(None):
                self._emit(out.to_ndarray().reshape(-1))
        if self._feed.received and not decoded:
            raise AudioError("the streamed bytes hold no decodable audio")
