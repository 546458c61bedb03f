"""Speech over an answer: a barge-in, or a backchannel to let pass.

When the user starts talking while a turn is being answered, the answer is paused at once
(`playback_paused`, within a VAD onset of the speech) and the utterance is judged:
- words that are not a backchannel ("wait", "what about …") in an interim or the final, or
  speech whose end is still unknown `window` seconds after it began: a barge-in. The answer
  ends interrupted, keeping what was played, and the utterance becomes the next turn. (STT
  declares the end once it has read the words, so the window covers a short utterance, the
  end-of-utterance silence and a decode on a busy machine: 1.5 s let "okay" barge in under load.)
- the final holds only a backchannel ("mm-hmm", "okay", "yeah"), nothing intelligible (a
  cough, a door: no words, low confidence or likely no speech): the answer resumes
  (`playback_resumed`) and nothing is answered or stored.
Interim results are judged as they come, so "wait, what about …" barges in before it ends.
When in doubt the answer stays paused until the words are known: a pause of a second is a
smaller harm than a lost answer or a "please say that again" for a "mm-hmm".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from voicebus.metrics import OVERLAPS
from voicebus.v1 import stt_pb2

if TYPE_CHECKING:
    from orchestrator.turn import TurnHandle

# Said to show attention or agreement, not to take the turn. English and Hindi.
BACKCHANNELS = frozenset("""
    mm mhm mmhmm mm-hmm mmm hmm hm uh-huh uhhuh uh huh um ah oh aha ok okay k yeah yea yes yep yup
    ya right alright sure i see got it cool nice wow great good fine true exactly indeed thanks thank you
    हाँ हां हम्म अच्छा ठीक है जी ओके सही
""".split())
# Whisper writes sounds it could not read as words in brackets: "(coughs)", "[Music]", "*sigh*".
_SOUNDS = re.compile(r"\([^)]*\)|\[[^\]]*\]|\*[^*]*\*")
_WORD = re.compile(r"[^\s.,!?;:\"“”‘’()\[\]…।॥]+")  # not \w: Devanagari vowel signs are not \w
MIN_CONFIDENCE = 0.4  # below it, a short utterance over an answer is noise that whisper guessed at
MAX_NO_SPEECH = 0.6


def words_of(text: str) -> list[str]:
    return [w.strip("'-") for w in _WORD.findall(_SOUNDS.sub(" ", text.lower())) if w.strip("'-")]


def is_backchannel(text: str) -> bool:
    """True when every word is a backchannel (an empty text too)."""
    return all(word in BACKCHANNELS for word in words_of(text))


def noise(transcript: stt_pb2.Transcript) -> bool:
    """Nothing the user meant as words: empty, likely silence, or guessed at."""
    return (transcript.no_speech or not words_of(transcript.text) or transcript.confidence < MIN_CONFIDENCE
            or transcript.no_speech_probability > MAX_NO_SPEECH)


class Overlap:
    """One utterance that began while `answer` was being said, from its pause to its verdict.

    States: "judging" (the answer paused), "barging_in" (the answer being interrupted), "turn"
    (the utterance is the next turn: its results go to it), "passed" (a backchannel: its results
    are dropped). `interrupt` ends the answer; `start_turn` starts the utterance's turn."""

    def __init__(self, answer: TurnHandle, window: float, final_wait: float,
                 interrupt: Callable[[], Awaitable[None]], start_turn: Callable[[], Awaitable[None]]) -> None:
        self.answer, self.final_wait = answer, final_wait
        self.state = "judging"
        self._interrupt, self._start_turn = interrupt, start_turn
        self._barging_in: asyncio.Task[None] | None = None
        self._waiter: asyncio.Task[None] | None = None  # the timer's barge-in
        self._timer = asyncio.get_running_loop().call_later(window, self._too_long)
        answer.pause()

    @property
    def judging(self) -> bool:
        return self.state == "judging"

    def speech_ended(self) -> None:
        """End of utterance: no longer than a backchannel; wait for its final (but not forever)."""
        if self.judging:
            self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(self.final_wait, self.let_pass, "")

    async def judge(self, result: stt_pb2.StreamingRecognitionResult) -> bool:
        """True when `result` belongs to a turn (the utterance's, after a barge-in); False when
        it is dropped (still judging, or a backchannel)."""
        if self.judging:
            transcript = result.transcript
            if noise(transcript) or is_backchannel(transcript.text):
                if result.is_final:
                    self.let_pass(transcript.text)
                return False
        await self.barge_in()
        return self.state == "turn"

    async def barge_in(self) -> None:
        """A barge-in: the answer ends (keeping what was played), the utterance is the next turn.
        Returns when that turn exists; while judging it decides, else it waits for the decision."""
        if self.judging:
            self.state = "barging_in"
            self._timer.cancel()
            OVERLAPS.labels(verdict="barge_in").inc()
            self._barging_in = asyncio.create_task(self._take_turn())
        if self._barging_in is not None:
            await asyncio.shield(self._barging_in)

    async def _take_turn(self) -> None:
        await self._interrupt()
        if self.state == "barging_in":  # not closed meanwhile
            self.state = "turn"
            await self._start_turn()

    def let_pass(self, heard: str) -> None:
        """Not an interruption (a backchannel, noise): the answer resumes, nothing is answered."""
        if not self.judging:
            return
        self.state = "passed"
        self._timer.cancel()
        OVERLAPS.labels(verdict="backchannel").inc()
        self.answer.resume(heard)

    def _too_long(self) -> None:
        if self.judging:
            self._waiter = asyncio.create_task(self.barge_in())

    async def close(self) -> None:
        """The utterance is dropped (typed text took the turn, the stream ends)."""
        self.state = "passed"
        self._timer.cancel()
        for task in (self._waiter, self._barging_in):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
