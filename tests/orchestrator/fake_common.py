"""What the three fakes share: faults, waiting on what they recorded, the end of a call.

Faults are plain attributes, so a test can switch one on or off between two turns
(`stt.fail_on_open = False` after an outage). `fail_times` limits how many calls a fault
hits (None: every call), so "the first call fails, the retry works" needs no second fake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

Failure = tuple[grpc.StatusCode, str]
# Generous on purpose: a wait only ends early when the expected thing happened, so a busy
# machine makes a test slower, never red.
WAIT_TIMEOUT_SECONDS = 20.0


def as_failure(value: grpc.StatusCode | Failure | None, default_message: str) -> Failure | None:
    """A fault given as a status code alone, or as (code, message)."""
    if value is None:
        return None
    if isinstance(value, grpc.StatusCode):
        return value, default_message
    code, message = value
    return code, message


@dataclass
class CallRecord:
    """What every fake records of one call. `outcome`: "open" while it runs, then "ok",
    "failed" (a scripted fault or a bad request), "cancelled" (by the client) or "stopped"
    (the server was stopped under it)."""

    outcome: str = "open"
    failure: Failure | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        return self.outcome == "cancelled"

    def end(self, outcome: str, failure: Failure | None = None) -> None:
        if self.outcome == "open":  # the first ending wins (an abort is followed by its unwinding)
            self.outcome, self.failure = outcome, failure
        self.ended.set()


class FakeBase:
    """Waiting helpers and the fault counter. Subclasses keep their calls in `calls`."""

    fail_times: int | None = None
    calls: list

    def __init__(self) -> None:
        self.stopping = False  # set by FakeServer.stop(): calls it ends are "stopped", not "cancelled"
        self._faulted_calls = 0

    def take_fault(self) -> bool:
        """True when the call now starting is one the faults apply to (see `fail_times`)."""
        if self.fail_times is not None and self._faulted_calls >= self.fail_times:
            return False
        self._faulted_calls += 1
        return True

    @property
    def cancelled(self) -> int:
        """Calls the client cancelled (the orchestrator does on barge-in)."""
        return sum(1 for call in self.calls if call.outcome == "cancelled")

    def interrupted_outcome(self) -> str:
        """The outcome of a call that ended by CancelledError or GeneratorExit."""
        return "stopped" if self.stopping else "cancelled"

    async def wait_until(self, condition: Callable[[], bool], what: str = "the condition",
                         timeout: float = WAIT_TIMEOUT_SECONDS) -> None:
        """Wait for something the fake records (e.g. `lambda: llm.cancelled == 1`); a call's end
        reaches the server a moment after the client acted, so tests wait for it, never sleep."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() > deadline:
                raise AssertionError(f"{type(self).__name__}: {what} did not happen within {timeout:g} s; "
                                     f"calls: {self.calls}")
            await asyncio.sleep(0.005)

    async def wait_calls(self, count: int, ended: bool = True) -> None:
        """Wait until `count` calls arrived (and, with `ended`, all of those ended)."""
        await self.wait_until(lambda: len(self.calls) >= count and (
            not ended or all(call.outcome != "open" for call in self.calls[:count])),
            f"{count} call(s){' ended' if ended else ''}")
