"""One StreamingTranscribe call: VAD-driven utterances, interim results, fast finals.

Speed of the final is the point of most of this file. Whisper's encoder always looks at
a 30 s window, so one decode costs about the same for 1 s or 20 s of speech; what we can
avoid is *starting* that decode only once the utterance is declared over:

- When trailing silence reaches SPECULATE (200 ms), the utterance is decoded at once,
  speculatively. If the silence lasts to end-of-utterance (500 ms by default), that
  result *is* the final, ready or nearly so when END_OF_UTTERANCE is sent. If speech
  resumes, it was just an early interim.
- Any earlier decode whose audio already reaches past the end of speech is reused too.
- At end-of-utterance the words of that decode are read (completeness.py): if they trail
  off ("… a table for"), the end waits for a longer silence (1.2 s by default), and speech
  that resumes meanwhile continues the same utterance.
- In long utterances, segments older than `commit_after_seconds` are committed: later
  decodes (interims and the final) only look at the uncommitted tail.

Interim decodes run only when the inference queue is idle (skipped, never queued) and
at most once per `interim_interval` of new audio. The request reader never waits for
any of this: audio keeps flowing into the input thread while decodes run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from stt_service.audio_input import WINDOW, AudioBlock, End
from stt_service.completeness import unfinished
from stt_service.engine import Heard, HeardSegment, InferenceQueue, Priority, WhisperEngine, make_transcript
from voicebus.audio import WHISPER_RATE, AudioError
from voicebus.metrics import STT_SECONDS
from voicebus.telemetry import tracer
from voicebus.v1 import stt_pb2

log = logging.getLogger(__name__)

PRE_ROLL = int(0.3 * WHISPER_RATE)  # audio kept before the VAD's speech start (onsets are soft)
POST_ROLL = int(0.2 * WHISPER_RATE)  # silence after the speech end that whisper should hear
SPECULATE = int(0.2 * WHISPER_RATE)  # trailing silence that starts the speculative final
PROMPT_CHARS = 200  # committed text passed as context to the next decode


@dataclass
class StreamOptions:
    language: str | None
    interim_results: bool
    single_utterance: bool
    end_of_utterance: int  # samples of silence
    unfinished_end_of_utterance: int  # samples of silence after words that trail off (completeness.py)
    interim_interval: int  # samples
    min_speech_windows: int
    threshold: float
    commit_after: int  # samples
    max_stream: int  # samples
    final_beam: int
    interim_beam: int
    min_window: float  # seconds; >= 30 turns short-window decoding off


def failed(future: asyncio.Future[Heard]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


class AudioBuffer:
    """The stream's recent audio, addressed by absolute sample index since the stream began."""

    def __init__(self) -> None:
        self.start = 0
        self._data = np.zeros(0, dtype=np.float32)

    @property
    def end(self) -> int:
        return self.start + self._data.size

    def append(self, samples: np.ndarray) -> None:
        self._data = np.concatenate([self._data, samples])

    def slice(self, begin: int, end: int) -> np.ndarray:
        return self._data[max(0, begin - self.start):max(0, end - self.start)].copy()

    def drop_before(self, position: int) -> None:
        cut = min(max(0, position - self.start), self._data.size)
        if cut:
            self._data = self._data[cut:]
            self.start += cut


@dataclass
class Decode:
    """One inference over [start, end) of an utterance."""
    start: int
    end: int
    timestamps: bool
    final: bool  # decoded with the final's settings: may become the final
    future: asyncio.Future[Heard]


@dataclass
class Utterance:
    index: int
    speech_start: int
    speech_end: int
    speech_arrival: float  # when the audio holding the latest speech arrived (monotonic)
    audio_start: int  # first sample whisper gets; moves forward when segments are committed
    next_interim_at: int
    silence_from: int | None = None
    committed: list[HeardSegment] = field(default_factory=list)
    language: str | None = None
    language_probability: float = 0.0
    latest: Decode | None = None
    last_interim_end: int = 0
    last_interim_words: list[str] = field(default_factory=list)
    held: bool = False  # its words trail off: the end waits for the longer silence
    ended: bool = False


class StreamingRecognizer:
    """Consumes AudioBlocks (then End) and emits StreamingTranscribeResponse messages."""

    def __init__(self, engine: WhisperEngine, jobs: InferenceQueue, options: StreamOptions,
                 emit: Callable[[stt_pb2.StreamingTranscribeResponse], None], request_id: str = "") -> None:
        self.engine, self.jobs, self.o = engine, jobs, options
        self._emit, self.request_id = emit, request_id
        self.buffer = AudioBuffer()
        self.utt: Utterance | None = None
        self.utterances = 0
        self.finals = 0
        self.done = False
        self._run_length = 0  # consecutive speech windows while no utterance is open
        self._run_start = 0
        self._neg_threshold = max(options.threshold - 0.15, 0.01)  # Silero's hysteresis

    async def run(self, items: asyncio.Queue[object]) -> None:
        """Until the input ends (or the first final, with single_utterance). Raises AudioError."""
        while not self.done:
            item = await items.get()
            if isinstance(item, End):
                await self._at_end()
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, AudioBlock)
            await self._on_block(item)

    # --- audio and VAD -------------------------------------------------------------
    async def _on_block(self, block: AudioBlock) -> None:
        first = self.buffer.end
        self.buffer.append(block.samples)
        if self.buffer.end > self.o.max_stream:
            raise AudioError(f"the stream is longer than the maximum of {self.o.max_stream / WHISPER_RATE:.0f} s "
                             "of audio; open a new stream")
        for i, prob in enumerate(block.speech_probs):
            await self._on_window(first + i * WINDOW, float(prob), block.arrival)
            if self.done:
                return
        if self.utt is None:
            self.buffer.drop_before(self.buffer.end - PRE_ROLL - self.o.min_speech_windows * WINDOW)
        else:
            self._maybe_interim(self.utt)

    async def _on_window(self, position: int, prob: float, arrival: float) -> None:
        u = self.utt
        if u is None:
            if prob < self.o.threshold:
                self._run_length = 0
                return
            if self._run_length == 0:
                self._run_start = position
            self._run_length += 1
            if self._run_length >= self.o.min_speech_windows:
                self._open_utterance(self._run_start, position + WINDOW, arrival)
            return
        if prob >= self.o.threshold or (prob >= self._neg_threshold and u.silence_from is None):
            u.speech_end, u.silence_from, u.speech_arrival = position + WINDOW, None, arrival
            u.held = False
            return
        if u.silence_from is None:
            u.silence_from = u.speech_end
        silence = position + WINDOW - u.speech_end
        if silence >= min(self.o.end_of_utterance, SPECULATE) and not self._covers(u, u.latest):
            # Only with a slot to spare: a guess must not take the room another stream's final needs.
            if self.jobs.in_flight < self.jobs.max_waiting or self.jobs.idle:
                self._launch(u, position + WINDOW, final=True)
        if silence >= self.o.end_of_utterance and await self._over(u, silence):
            await self._finish(u)

    async def _over(self, u: Utterance, silence: int) -> bool:
        """True when the utterance ends at this silence: its words read as finished, or the longer
        wait for words that trail off is over. The words are those of the decode the final reuses,
        so reading them costs no inference."""
        if silence >= self.o.unfinished_end_of_utterance:
            return True
        if u.held:
            return False
        if not self._covers(u, u.latest):
            self._launch(u, min(u.speech_end + POST_ROLL, self.buffer.end), final=True)
        assert u.latest is not None
        try:
            heard = await u.latest.future
        except Exception:  # noqa: BLE001 - _finish decodes again, or reports why it cannot
            return True
        u.held = unfinished(" ".join(segment.text for segment in u.committed + heard.segments))
        return not u.held

    def _open_utterance(self, start: int, end: int, arrival: float) -> None:
        self.utt = Utterance(index=self.utterances, speech_start=start, speech_end=end, speech_arrival=arrival,
                             audio_start=max(self.buffer.start, start - PRE_ROLL),
                             next_interim_at=start + self.o.interim_interval)
        self.utterances += 1
        self._event(stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED, start)

    async def _at_end(self) -> None:
        u = self.utt
        if u is not None and not u.ended:
            if u.silence_from is None:  # still speaking when the client half-closed
                u.speech_end, u.speech_arrival = self.buffer.end, time.monotonic()
            await self._finish(u)
        elif self.finals == 0:
            self._final(make_transcript([], self.o.language or "", 0.0, 0.0, self.buffer.end / WHISPER_RATE),
                        index=0, latency=0.0)

    # --- decoding ------------------------------------------------------------------
    def _covers(self, u: Utterance, d: Decode | None) -> bool:
        """True when decode `d` heard all of the utterance's speech (and can be its final)."""
        return (d is not None and d.final and d.start == u.audio_start and not failed(d.future)
                and d.end >= min(u.speech_end + POST_ROLL, self.buffer.end))

    def _launch(self, u: Utterance, end: int, final: bool) -> Decode:
        if u.latest is not None and not u.latest.future.done():
            u.latest.future.cancel()  # superseded: leaves the queue if it has not started
        audio = self.buffer.slice(u.audio_start, end)
        timestamps = audio.size > self.o.commit_after
        window = None if timestamps else self.engine.window_for(audio.size / WHISPER_RATE, self.o.min_window)
        kwargs = {"language": u.language or self.o.language, "offset": u.audio_start / WHISPER_RATE,
                  "beam_size": self.o.final_beam if final else self.o.interim_beam,
                  "prompt": " ".join(s.text for s in u.committed)[-PROMPT_CHARS:] or None}
        priority = Priority.FINAL if final else Priority.INTERIM
        if window is not None:
            future = self.jobs.submit(self.engine.transcribe_window, audio, window=window, priority=priority, **kwargs)
        else:
            future = self.jobs.submit(self.engine.transcribe, audio, timestamps=timestamps, priority=priority,
                                      **kwargs)
        decode = Decode(u.audio_start, end, timestamps, final, future)
        u.latest = decode
        future.add_done_callback(lambda f: self._decoded(u, decode))
        return decode

    def _maybe_interim(self, u: Utterance) -> None:
        if u.ended or u.silence_from is not None or self.buffer.end < u.next_interim_at:
            return
        if not (self.o.interim_results or self.buffer.end - u.audio_start > self.o.commit_after):
            return  # nobody wants interims and there is nothing to commit
        if (u.latest and not u.latest.future.done()) or not self.jobs.idle:
            return  # busy: skip this interim rather than queue it
        self._launch(u, self.buffer.end, final=False)
        u.next_interim_at = self.buffer.end + self.o.interim_interval

    def _decoded(self, u: Utterance, d: Decode) -> None:
        if failed(d.future):
            if not d.future.cancelled():
                log.warning("background decode failed", exc_info=d.future.exception())
            return
        heard = d.future.result()
        if u.language is None and self.engine.multilingual and heard.language_probability >= 0.5:
            # Detect once per utterance; later decodes skip the detection pass.
            u.language, u.language_probability = heard.language, heard.language_probability
        if u is not self.utt or u.ended or d.start != u.audio_start:
            return
        tail = heard.segments
        if d.timestamps and len(heard.segments) > 1:
            self._commit(u, heard.segments[:-1])
            tail = heard.segments[-1:]
        words = " ".join(s.text for s in u.committed + tail).lower().split()
        if self.o.interim_results and d.end > u.last_interim_end and heard.text and words != u.last_interim_words:
            # Stability: the share of words on which this interim agrees with the previous one.
            agreed = sum(1 for a, b in zip(words, u.last_interim_words) if a == b)
            u.last_interim_end, u.last_interim_words = d.end, words
            self._result(u, Heard(tail, heard.language, heard.language_probability, heard.dropped_no_speech),
                         is_final=False, stability=agreed / len(words) if words else 0.0)

    def _commit(self, u: Utterance, keep: list[HeardSegment]) -> None:
        """Keep these segments for good; later decodes start after them."""
        u.committed.extend(keep)
        u.audio_start = max(u.audio_start, int(keep[-1].end * WHISPER_RATE))
        u.latest = None
        self.buffer.drop_before(u.audio_start)
        log.debug("committed segments", extra={"fields": {"count": len(keep), "at": keep[-1].end}})

    async def _finish(self, u: Utterance) -> None:
        u.ended = True
        self._event(stt_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE, u.speech_end)
        end = min(u.speech_end + POST_ROLL, self.buffer.end)
        with tracer(__name__).start_as_current_span("stt.final", attributes={
                "stt.model": self.engine.name, "stt.utterance_index": u.index}) as span:
            heard: Heard | None = None
            if self._covers(u, u.latest):
                assert u.latest is not None
                try:
                    heard = await u.latest.future
                    span.set_attribute("stt.reused_decode", True)
                except Exception:  # fall back to a fresh decode below
                    heard = None
            if heard is None:
                # Overloaded propagates: the caller ends the stream with RESOURCE_EXHAUSTED.
                heard = await self._launch(u, end, final=True).future
            span.set_attributes({"stt.audio_seconds": (end - u.audio_start) / WHISPER_RATE,
                                 "stt.inference_seconds": heard.seconds,
                                 "stt.language": u.language or heard.language})
        latency = time.monotonic() - u.speech_arrival
        STT_SECONDS.labels(kind="stream_final").observe(latency)
        self._result(u, heard, is_final=True, latency=latency)
        self.utt, self._run_length = None, 0
        self.buffer.drop_before(u.speech_end)
        if self.o.single_utterance:
            self.done = True

    # --- messages --------------------------------------------------------------------
    def _result(self, u: Utterance, heard: Heard, *, is_final: bool, stability: float = 0.0,
                latency: float = 0.0) -> None:
        language = u.language or heard.language
        probability = u.language_probability if u.language else heard.language_probability
        transcript = make_transcript(u.committed + heard.segments, language, probability,
                                     u.speech_start / WHISPER_RATE, u.speech_end / WHISPER_RATE,
                                     heard.dropped_no_speech)
        if is_final:
            self._final(transcript, u.index, latency)
        else:
            self._send(result=stt_pb2.StreamingRecognitionResult(
                transcript=transcript, is_final=False, stability=stability, utterance_index=u.index))

    def _final(self, transcript: stt_pb2.Transcript, index: int, latency: float) -> None:
        self.finals += 1
        self._send(result=stt_pb2.StreamingRecognitionResult(
            transcript=transcript, is_final=True, stability=1.0, utterance_index=index, latency_seconds=latency))

    def _event(self, kind: int, position: int) -> None:
        self._send(event=stt_pb2.SpeechEvent(type=kind, offset_seconds=position / WHISPER_RATE))

    def _send(self, **kwargs: object) -> None:
        self._emit(stt_pb2.StreamingTranscribeResponse(request_id=self.request_id, model=self.engine.name,
                                                       **kwargs))  # type: ignore[arg-type]
