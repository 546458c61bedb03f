"""How many sentences are synthesised at once, and a fair wait for the rest.

A streaming call used to take its slot when it opened and keep it while the LLM was still
thinking: 8 idle streams filled the service and the 9th turn of 20 concurrent ones got no
voice. Now a call holds a slot only while it synthesises one sentence; a sentence that finds
every slot taken waits in line (first come, first served, so a new answer's first sentence is
not starved by long answers), and only when the line itself is full, or the wait too long,
does the caller hear RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class Busy(Exception):
    """No slot now and no room to wait for one; the message says how busy and what to do."""


class SynthesisSlots:
    def __init__(self, slots: int, max_waiting: int, max_wait_seconds: float) -> None:
        self.slots = max(1, slots)
        self.max_waiting = max(0, max_waiting)
        self.max_wait_seconds = max_wait_seconds
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def _busy(self, why: str) -> Busy:
        return Busy(f"the speech service is busy: {why} ({self.running} sentences being synthesised, "
                    f"{self.waiting} waiting; limits VOICEBUS_TTS_MAX_CONCURRENT_REQUESTS={self.slots}, "
                    f"VOICEBUS_TTS_MAX_WAITING_SENTENCES={self.max_waiting}); try again shortly")

    async def acquire(self) -> None:
        if self.running < self.slots and not self.waiting:
            self.running += 1
            return
        if self.waiting >= self.max_waiting:
            raise self._busy("the waiting line is full")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        # A timer, not asyncio.wait_for: wait_for may swallow the caller's cancellation when the
        # slot arrives at the same moment (Python 3.11), and a cancelled call must not keep one.
        timer = loop.call_later(self.max_wait_seconds, self._expire, waiter)
        try:
            await waiter
        except asyncio.CancelledError:  # the caller went away (barge-in) while waiting
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed over at that very moment: pass it on
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(self._busy(f"no slot came free within {self.max_wait_seconds:g} s"))

    def release(self) -> None:
        # The slot goes straight to the longest waiter, so a newcomer cannot jump the line.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
