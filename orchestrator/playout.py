"""What the user has heard of an answer, by the clock (`ConverseConfig.realtime_playback`).

A client that plays in real time starts each audio chunk when it arrives or when the one
before it ends, whichever is later, and plays it for its duration. So the server knows,
without being told, when the answer will have played and which word is playing at any
moment. A client's `playback` report (milliseconds of the turn's audio played) corrects the
clock for what the server cannot see: a slow start, buffering, a paused tab.

Words are placed within a sentence's audio by their share of its characters: speech time
follows the letters spoken more closely than the word count, and it is all we know without
word timings from the TTS.

While the client is told to pause (the user may be talking over the answer) the clock stands
still: nothing plays, and on resume every piece not yet played moves later by the pause.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

_WORD = re.compile(r"\S+")


@dataclass
class _Piece:
    text: str
    start: float  # when it starts playing (monotonic seconds)
    duration: float


class Playout:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pieces: list[_Piece] = []
        self._end = 0.0  # when the last piece delivered so far stops playing
        self._paused_at: float | None = None
        self._changed = asyncio.Event()

    def _now(self) -> float:
        return self._clock() if self._paused_at is None else self._paused_at

    @property
    def ends_at(self) -> float:
        return self._end

    def delivered(self, text: str, duration: float) -> None:
        """A chunk of the answer's audio (speaking `text`) reached the client now."""
        start = max(self._now(), self._end)
        self._pieces.append(_Piece(text, start, max(0.0, duration)))
        self._end = start + max(0.0, duration)
        self._changed.set()

    def report(self, played_seconds: float) -> None:
        """The client has played `played_seconds` of the audio delivered so far: that position is
        now, and the chunks play back to back around it."""
        now = self._now()
        start = now - max(0.0, played_seconds)
        for piece in self._pieces:
            piece.start = start
            start += piece.duration
        self._end = max(start, now)
        self._changed.set()

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._clock()

    def resume(self) -> None:
        if self._paused_at is None:
            return
        paused_at, self._paused_at = self._paused_at, None
        shift = self._clock() - paused_at
        for piece in self._pieces:
            if piece.start + piece.duration > paused_at:
                piece.start += shift
        if self._end > paused_at:
            self._end += shift
        self._changed.set()

    def heard_text(self) -> str:
        """The words played so far: whole chunks, then the words of the playing one that ended."""
        now, words = self._now(), []
        for piece in self._pieces:
            if now >= piece.start + piece.duration:
                words.extend(_WORD.findall(piece.text))
            elif now > piece.start and piece.duration > 0:
                reached = (now - piece.start) / piece.duration * len(piece.text)
                words.extend(m.group() for m in _WORD.finditer(piece.text) if m.end() <= reached)
        return " ".join(words)

    async def played(self) -> None:
        """Return once all the audio delivered so far has played (reports may move that)."""
        # A timer rather than asyncio.wait_for: on Python 3.11 wait_for swallows a cancel (the
        # barge-in) that arrives just as the event it waits for is set (a playback report).
        loop = asyncio.get_running_loop()
        while self.paused or (remaining := self._end - self._clock()) > 0:
            self._changed.clear()
            if self.paused:  # until resumed
                await self._changed.wait()
                continue
            timer = loop.call_later(remaining, self._changed.set)
            try:
                await self._changed.wait()
            finally:
                timer.cancel()
