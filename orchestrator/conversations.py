"""Who uses which conversation: its running turn (at most one, across all orchestrators) and
this process's open streams.

The lock is taken before a turn's handle exists, so a refused turn never starts (the client
gets an ABORTED error, nothing is announced or stored). It is this process's claim first,
then, with `leases`, the conversation's lease in NATS that every orchestrator replica
respects (orchestrator/lease.py). Deleting a conversation ends its
running turn first (nothing of it is stored) and then tells every stream on it, so no later
write can bring the conversation back or trip over its missing rows.

Draining (SIGTERM, `drain`): no turn starts here any more, and every stream is told, so that
it ends with UNAVAILABLE once its running turn has and its client moves to another
orchestrator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.lease import TurnLeases
    from orchestrator.turn import TurnHandle


class Conversations:
    def __init__(self, leases: TurnLeases | None = None) -> None:
        self.leases = leases
        self._claimed: dict[str, str] = {}  # conversation -> turn id holding it
        self._running: dict[str, TurnHandle] = {}
        self._streams: dict[str, set[Callable[[], None]]] = {}
        self._drainers: set[Callable[[], None]] = set()  # one per open stream
        self._idle = asyncio.Event()  # no turn claimed here
        self._idle.set()
        self.draining = False

    async def claim(self, conversation_id: str, turn_id: str) -> bool:
        """Reserve the conversation for the turn about to start; False if another turn holds it,
        here or in another orchestrator."""
        if conversation_id in self._claimed:
            return False
        self._claimed[conversation_id] = turn_id  # before the await: no second local turn slips in
        self._idle.clear()
        if self.leases is not None and not await self.leases.acquire(conversation_id, turn_id):
            self._unclaim(conversation_id)
            return False
        return True

    def _unclaim(self, conversation_id: str) -> None:
        del self._claimed[conversation_id]
        self._running.pop(conversation_id, None)
        if not self._claimed:
            self._idle.set()

    def hold(self, handle: TurnHandle) -> None:
        """The claimed turn's handle, so that a delete can end it."""
        self._running[handle.turn.conversation_id] = handle

    async def release(self, handle: TurnHandle) -> None:
        """The turn is over: its lease goes first, so the client's next turn (sent on hearing this
        one end, perhaps to another orchestrator) finds the conversation free."""
        conversation_id = handle.turn.conversation_id
        if self._claimed.get(conversation_id) == handle.turn_id:
            if self.leases is not None:
                await self.leases.release(conversation_id, handle.turn_id)
            self._unclaim(conversation_id)

    @property
    def running(self) -> int:
        """Turns claimed in this process and not yet ended."""
        return len(self._claimed)

    def watch(self, conversation_id: str, on_deleted: Callable[[], None], on_drain: Callable[[], None]) -> None:
        self._streams.setdefault(conversation_id, set()).add(on_deleted)
        self._drainers.add(on_drain)

    def unwatch(self, conversation_id: str, on_deleted: Callable[[], None], on_drain: Callable[[], None]) -> None:
        self._drainers.discard(on_drain)
        streams = self._streams.get(conversation_id)
        if streams is not None:
            streams.discard(on_deleted)
            if not streams:
                del self._streams[conversation_id]

    async def end_all(self, conversation_id: str) -> None:
        """Before a delete: the running turn ends unstored, then every stream on it is told."""
        if (running := self._running.get(conversation_id)) is not None:
            await running.cancel_deleted()
        for on_deleted in list(self._streams.get(conversation_id, ())):
            on_deleted()

    async def drain(self, grace: float) -> None:
        """No new turn starts here; every stream is told. Returns when the turns running here
        have ended, or after `grace` seconds."""
        self.draining = True
        for on_drain in list(self._drainers):
            on_drain()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except asyncio.TimeoutError:
            pass


DRAINING = "this orchestrator is draining (shutting down); retry: another one takes the conversation"
