"""A replica killed mid-turn while another runs on: the survivor fails its unfinished turns
(ConversationStore.fail_abandoned, which the orchestrator calls every few seconds), never those
of an orchestrator that is still running them, its own included."""

from __future__ import annotations

from helpers import eventually
from orchestrator.store import ABANDONED_ERROR, open_store
from voicebus.v1 import assistant_pb2 as O


def turn(turn_id: str, cid: str) -> O.Turn:
    return O.Turn(turn_id=turn_id, conversation_id=cid, user_text="hello")


async def test_postgres_survivor_fails_the_turns_of_a_killed_replica_only(postgres):
    url = postgres.create_database()
    killed, survivor = await open_store(url), await open_store(url)
    try:
        await killed.start_turn(turn("t-killed", "c1"))
        await survivor.start_turn(turn("t-running", "c2"))
        assert await survivor.fail_abandoned() == 0  # both orchestrators run their turns
        # kill -9: the process's connections end without a word, its owner lock with them.
        assert killed._owner_connection is not None  # noqa: SLF001
        killed._owner_connection.terminate()  # noqa: SLF001
        # The server frees the lock once it has seen the connection go: the next sweep catches it.
        assert await eventually(survivor.fail_abandoned, "the killed replica's turn failed", 10) == 1
        assert await survivor.fail_abandoned() == 0  # once
        lost = (await survivor.get("c1")).turns[0]
        assert (lost.outcome, lost.error_message) == (O.TURN_OUTCOME_FAILED, ABANDONED_ERROR)
        running = (await survivor.get("c2")).turns[0]
        assert running.outcome == O.TURN_OUTCOME_UNSPECIFIED  # the survivor's own turn goes on
    finally:
        await killed.close()
        await survivor.close()


async def test_sqlite_has_no_other_orchestrator_to_outlive(tmp_path):
    store = await open_store(f"sqlite:///{tmp_path / 'voicebus.db'}")
    try:
        await store.start_turn(turn("t1", "c1"))
        assert await store.fail_abandoned() == 0
        assert (await store.get("c1")).turns[0].outcome == O.TURN_OUTCOME_UNSPECIFIED
    finally:
        await store.close()
