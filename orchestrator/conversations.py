"""Who uses which conversation in this process: its running turn (at most one) and its open streams.

The lock is taken before a turn's handle exists, so a refused turn never starts (the client
gets an ABORTED error, nothing is announced or stored). Deleting a conversation ends its
running turn first (nothing of it is stored) and then tells every stream on it, so no later
write can bring the conversation back or trip over its missing rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.turn import TurnHandle


class Conversations:
    def __init__(self) -> None:
        self._claimed: dict[str, str] = {}  # conversation -> turn id holding it
        self._running: dict[str, TurnHandle] = {}
        self._streams: dict[str, set[Callable[[], None]]] = {}

    def claim(self, conversation_id: str, turn_id: str) -> bool:
        """Reserve the conversation for the turn about to start; False if another turn holds it."""
        if conversation_id in self._claimed:
            return False
        self._claimed[conversation_id] = turn_id
        return True

    def hold(self, handle: TurnHandle) -> None:
        """The claimed turn's handle, so that a delete can end it."""
        self._running[handle.turn.conversation_id] = handle

    def release(self, handle: TurnHandle) -> None:
        conversation_id = handle.turn.conversation_id
        if self._claimed.get(conversation_id) == handle.turn_id:
            del self._claimed[conversation_id]
            self._running.pop(conversation_id, None)

    def watch(self, conversation_id: str, on_deleted: Callable[[], None]) -> None:
        self._streams.setdefault(conversation_id, set()).add(on_deleted)

    def unwatch(self, conversation_id: str, on_deleted: Callable[[], None]) -> None:
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
