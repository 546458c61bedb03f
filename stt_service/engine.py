"""The Whisper engine (faster-whisper on CTranslate2) and the bounded queue in front of it.

One model per process, one inference at a time: on a small CPU two parallel inferences
are each slower than two in a row. The queue in front of it is bounded so an overloaded
instance says so at once (RESOURCE_EXHAUSTED) and the caller can go to another instance
instead of waiting.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import heapq
import itertools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from stt_service.models import resolve_model
from stt_service.settings import SttSettings
from voicebus.audio import WHISPER_RATE
from voicebus.v1 import stt_pb2

log = logging.getLogger(__name__)

# Whisper's own rule for "this window was silence": likely no speech AND an unsure decode.
NO_SPEECH_PROB = 0.6
NO_SPEECH_LOGPROB = -1.0
# Short-window decoding (see `transcribe_window`): the speech plus this much silence.
WINDOW_TAIL_SECONDS = 8.0
FULL_WINDOW_SECONDS = 30.0


class Priority(enum.IntEnum):
    """Lower runs first."""
    FINAL = 0  # a streaming final (or the speculative decode that may become one)
    FILE = 1  # Transcribe
    INTERIM = 2


class Overloaded(RuntimeError):
    """Too many inference jobs are waiting; the message says so in words."""


class UnsupportedLanguage(ValueError):
    pass


@dataclass(frozen=True)
class HeardSegment:
    """A piece of decoded speech; times are seconds in the stream or file."""
    text: str
    start: float
    end: float
    avg_logprob: float
    tokens: int
    no_speech_prob: float


@dataclass
class Heard:
    """What one inference heard."""
    segments: list[HeardSegment]
    language: str
    language_probability: float
    # Highest no-speech probability among windows dropped as silence (None: none dropped).
    dropped_no_speech: float | None = None
    seconds: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments).strip()


def confidence_of(segments: list[HeardSegment]) -> float:
    """exp of the token-weighted mean log-probability: 1 = certain, near 0 = guessing."""
    tokens = sum(max(1, s.tokens) for s in segments)
    if not tokens:
        return 0.0
    mean = sum(s.avg_logprob * max(1, s.tokens) for s in segments) / tokens
    return float(min(1.0, math.exp(mean)))


def make_transcript(segments: list[HeardSegment], language: str, language_probability: float,
                    audio_start: float, audio_end: float, dropped_no_speech: float | None = None) -> stt_pb2.Transcript:
    text = " ".join(s.text for s in segments).strip()
    if segments:
        no_speech = float(np.mean([s.no_speech_prob for s in segments]))
    else:
        # Nothing was kept: either whisper judged every window silent (its probability), or
        # the VAD found no speech at all, so whisper never had to look (certain).
        no_speech = 1.0 if dropped_no_speech is None else dropped_no_speech
    return stt_pb2.Transcript(
        text=text, language_code=language, language_probability=language_probability,
        confidence=confidence_of(segments) if text else 0.0, no_speech_probability=no_speech,
        no_speech=not text,
        segments=[stt_pb2.TranscriptSegment(
            text=s.text, start_seconds=s.start, end_seconds=s.end, confidence=confidence_of([s]),
            no_speech_probability=s.no_speech_prob) for s in segments],
        audio_start_seconds=audio_start, audio_end_seconds=audio_end)


class WhisperEngine:
    """A loaded faster-whisper model. `transcribe` blocks: call it through `InferenceQueue`."""

    def __init__(self, settings: SttSettings) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: we only pass local folders
        from faster_whisper import WhisperModel

        self.name, path = resolve_model(settings.stt_model, settings.data_dir, settings.stt_model_cache_dir)
        threads = settings.stt_cpu_threads or os.cpu_count() or 1
        started = time.perf_counter()
        self.model = WhisperModel(str(path), device="cpu", compute_type=settings.stt_compute_type,
                                  cpu_threads=threads, num_workers=1, local_files_only=True)
        self.multilingual = bool(self.model.model.is_multilingual)
        log.info("model loaded", extra={"fields": {
            "model": self.name, "path": str(path), "threads": threads, "multilingual": self.multilingual,
            "seconds": round(time.perf_counter() - started, 2)}})

    def language_for(self, code: str) -> str | None:
        """The model's language for a BCP-47 hint; None = detect. Raises UnsupportedLanguage."""
        short = code.strip().lower().replace("_", "-").split("-")[0]
        if short in ("", "auto"):
            return None if self.multilingual else "en"
        if short not in self.model.supported_languages:
            if not self.multilingual:
                raise UnsupportedLanguage(
                    f"the model {self.name} understands English only, not '{code[:40]}'; "
                    "start the STT service with VOICEBUS_STT_MODEL=base for other languages")
            raise UnsupportedLanguage(f"language '{code[:40]}' is not one Whisper knows")
        return short

    def window_for(self, audio_seconds: float, min_window: float) -> float | None:
        """The encoder window for a short-window decode of this much audio, or None (use 30 s)."""
        window = float(math.ceil(max(min_window, audio_seconds + WINDOW_TAIL_SECONDS)))
        return window if window < FULL_WINDOW_SECONDS else None

    def transcribe_window(self, audio: np.ndarray, *, window: float, language: str | None, beam_size: int,
                          offset: float = 0.0, prompt: str | None = None) -> Heard:
        """One decode of short audio with the encoder looking at `window` seconds instead of 30.

        Whisper pads every input to 30 s and the encoder's cost grows with that length, so
        for a 3 s question most of the work is spent on silence. Padding to the speech plus
        8 s of silence (15 s at least) keeps the model seeing a clear end of speech — with
        less, it tends to repeat itself — and on our test sentences gives the same words
        at about a third of the cost. A decode that still looks repetitive is redone the
        standard way.
        """
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        started = time.perf_counter()
        frames = int(window * 100)
        padded = np.zeros(int(window * WHISPER_RATE), dtype=np.float32)
        padded[: min(audio.size, padded.size)] = audio[: padded.size]
        features = self.model.feature_extractor(padded, padding=0)[:, :frames]
        encoded = self.model.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])))
        probability = 1.0
        if language is None:
            (best, probability), *_ = self.model.model.detect_language(encoded)[0]
            language = best[2:-2]
        tokenizer = Tokenizer(self.model.hf_tokenizer, self.multilingual, task="transcribe", language=language)
        tokens: list[int] = []
        if prompt:
            tokens = [tokenizer.sot_prev, *tokenizer.encode(" " + prompt.strip())[-(self.model.max_length // 2 - 1):]]
        tokens += [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        seconds = audio.size / WHISPER_RATE
        result = self.model.model.generate(
            encoded, [tokens], beam_size=beam_size, patience=1, length_penalty=1,
            # a bound on runaway repetition: nobody says more than ~8 tokens a second
            max_length=min(self.model.max_length, len(tokens) + int(seconds * 8) + 20),
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]))[0]
        ids = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        text = tokenizer.decode(ids).strip()
        if get_compression_ratio(text) > 2.4 or repeats_itself(text):
            log.debug("short-window decode looked repetitive; redoing it with the 30 s window")
            return self.transcribe(audio, language=language, beam_size=beam_size, timestamps=False,
                                   offset=offset, prompt=prompt)
        avg_logprob = result.scores[0] * len(ids) / (len(ids) + 1)
        heard = Heard([], language, float(probability), seconds=0.0)
        if text and not (result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < NO_SPEECH_LOGPROB):
            heard.segments.append(HeardSegment(text=text, start=round(offset, 3), end=round(offset + seconds, 3),
                                               avg_logprob=avg_logprob, tokens=len(ids),
                                               no_speech_prob=result.no_speech_prob))
        elif text:
            heard.dropped_no_speech = result.no_speech_prob
        heard.seconds = time.perf_counter() - started
        return heard

    def transcribe(self, audio: np.ndarray, *, language: str | None, beam_size: int, timestamps: bool,
                   offset: float = 0.0, prompt: str | None = None, vad_filter: bool = False,
                   fallback: bool = False) -> Heard:
        started = time.perf_counter()
        segments, info = self.model.transcribe(
            audio, language=language, beam_size=beam_size, best_of=beam_size,
            temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0] if fallback else 0.0,
            without_timestamps=not timestamps, initial_prompt=prompt or None,
            # we apply whisper's silence rule ourselves below, to keep the probability
            no_speech_threshold=None, condition_on_previous_text=timestamps,
            vad_filter=vad_filter, vad_parameters={"min_silence_duration_ms": 1000} if vad_filter else None)
        kept: list[HeardSegment] = []
        dropped: float | None = None
        for s in segments:
            if s.no_speech_prob > NO_SPEECH_PROB and s.avg_logprob < NO_SPEECH_LOGPROB or not s.text.strip():
                dropped = max(dropped or 0.0, s.no_speech_prob)
                continue
            end = min(s.end, audio.size / WHISPER_RATE)  # whisper's last timestamp may overshoot
            kept.append(HeardSegment(text=s.text.strip(), start=round(offset + min(s.start, end), 3),
                                     end=round(offset + end, 3), avg_logprob=s.avg_logprob,
                                     tokens=len(s.tokens), no_speech_prob=s.no_speech_prob))
        return Heard(kept, info.language, float(info.language_probability), dropped,
                     seconds=time.perf_counter() - started)


def repeats_itself(text: str) -> bool:
    """True for "Open the door, please. Open the door, please." (a looping decoder)."""
    words = [w.strip(".,!?;:").lower() for w in text.split()]
    half = len(words) // 2
    return half >= 2 and words[:half] == words[half:2 * half]


@dataclass
class _Job:
    future: asyncio.Future[Any]
    run: Callable[[], Any]
    state: str = "waiting"  # waiting → running → done, or waiting → dropped (its caller gave up)


class InferenceQueue:
    """One worker thread, jobs by priority: a stream's final overtakes a whole file waiting to
    be transcribed (a person is waiting for the final). At most `max_waiting` jobs wait
    behind the running one; a job whose caller gives up before it starts leaves at once.

    A stream's final may also wait beyond that, up to `max_waiting_finals` more: 8 spoken
    turns ending together each need one, and refusing one loses a turn the user has already
    spoken (with 4 places, 3 of 8 concurrent spoken turns failed). Each stream has at most
    one final waiting, so they are few; files and interims are refused first."""

    def __init__(self, max_waiting: int, max_waiting_finals: int = 0) -> None:
        self.max_waiting = max_waiting
        self.max_waiting_finals = max_waiting_finals
        self.in_flight = 0  # running + waiting; only touched on the event loop
        self._heap: list[tuple[int, int, _Job]] = []
        self._order = itertools.count()
        self._lock = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="whisper", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        return self.in_flight == 0

    @property
    def has_room(self) -> bool:
        return self.in_flight <= self.max_waiting

    def check_room(self, priority: int = Priority.FILE) -> None:
        room = self.max_waiting + (self.max_waiting_finals if priority == Priority.FINAL else 0)
        if self.in_flight > room:
            raise Overloaded(f"the speech recognizer is busy ({self.in_flight} jobs in progress or waiting); "
                             "try again shortly or use another instance")

    def submit(self, fn: Callable[..., Any], *args: Any, priority: int = Priority.FILE,
               **kwargs: Any) -> asyncio.Future[Any]:
        """Queue a job now (or raise Overloaded); await the returned future for its result.
        Cancelling the future withdraws the job if it has not started yet."""
        self.check_room(priority)
        job = _Job(asyncio.get_running_loop().create_future(), functools.partial(fn, *args, **kwargs))
        self.in_flight += 1
        job.future.add_done_callback(lambda _: self._withdraw(job))
        with self._lock:
            heapq.heappush(self._heap, (priority, next(self._order), job))
            self._lock.notify()
        return job.future

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self.submit(fn, *args, **kwargs)

    def _withdraw(self, job: _Job) -> None:
        if not job.future.cancelled():
            return
        with self._lock:
            if job.state != "waiting":
                return  # running: the worker settles the count when it ends
            job.state = "dropped"
        self.in_flight -= 1

    def _work(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._heap or self._stopped)
                if self._stopped:
                    return
                _, _, job = heapq.heappop(self._heap)
                if job.state == "dropped":
                    continue
                job.state = "running"
            try:
                result, error = job.run(), None
            except Exception as exc:
                result, error = None, exc
            try:
                job.future.get_loop().call_soon_threadsafe(self._settle, job, result, error)
            except RuntimeError:  # the loop is gone: the process is stopping
                pass

    def _settle(self, job: _Job, result: Any, error: BaseException | None) -> None:
        job.state = "done"
        self.in_flight -= 1
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
