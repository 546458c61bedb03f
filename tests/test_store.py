"""The conversation store, the same tests on both backends: a SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.store import StoreConfigError, StoreError, StoreUnavailable, open_store
from voicebus.v1 import assistant_pb2 as O
from voicebus.v1 import common_pb2


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'voicebus.db'}"
    return request.getfixturevalue("postgres").create_database()


def turn(turn_id: str, text: str = "hello", cid: str = "c1") -> O.Turn:
    return O.Turn(turn_id=turn_id, conversation_id=cid, user_text=text)


async def test_turns_are_stored_read_listed_and_deleted(url):
    store = await open_store(url)
    try:
        seed = [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="earlier"),
                common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content="reply")]
        first = turn("t1", "What is the capital?")
        await store.start_turn(first, seed)
        assert first.index == 1
        first.assistant_text, first.outcome = "Paris.", O.TURN_OUTCOME_COMPLETED
        await store.finish_turn(first)
        assert [m.content for m in await store.history("c1", 10)] == ["earlier", "reply", "What is the capital?",
                                                                       "Paris."]
        got = await store.get("c1")
        assert got is not None and got.title == "earlier" and got.turn_count == 2
        assert [(t.index, t.outcome) for t in got.turns] == [(0, O.TURN_OUTCOME_COMPLETED),
                                                             (1, O.TURN_OUTCOME_COMPLETED)]
        listed, more = await store.list(10, 0)
        assert [c.conversation_id for c in listed] == ["c1"] and not more
        assert await store.delete("c1") and not await store.exists("c1")
    finally:
        await store.close()


async def test_migrations_from_empty_then_none_and_a_retried_write_changes_nothing(url):
    store = await open_store(url)
    again = await open_store(url)
    try:
        assert store.schema == (0, 2) and again.schema == (2, 2)
        t = turn("t1")
        await store.start_turn(t)
        retry = turn("t1")
        await again.start_turn(retry)  # the first try's answer was lost: the same turn once more
        await store.finish_turn(t)
        await store.finish_turn(t)
        assert retry.index == t.index == 0 and await store.turn_count("c1") == 1
    finally:
        await store.close()
        await again.close()


async def test_a_crashed_orchestrators_turns_are_failed_at_the_next_start(url):
    crashed = await open_store(url)
    await crashed.start_turn(turn("t1"))
    await crashed.close()
    store = await open_store(url)
    try:
        assert await store.fail_unfinished() == 1
        got = await store.get("c1")
        assert got is not None and got.turns[0].outcome == O.TURN_OUTCOME_FAILED
    finally:
        await store.close()


async def test_postgres_turns_of_a_running_orchestrator_stay_and_concurrent_turns_get_distinct_indexes(postgres):
    url = postgres.create_database()
    a, b = await open_store(url), await open_store(url)
    try:
        turns = [turn(f"t{i}") for i in range(30)]
        await asyncio.gather(*[(a if i % 2 else b).start_turn(t) for i, t in enumerate(turns)])
        assert sorted(t.index for t in turns) == list(range(30))
        c = await open_store(url)
        assert await c.fail_unfinished() == 0  # a and b are running them
        await c.close()
    finally:
        await a.close()
        await b.close()


async def test_postgres_outage_is_unavailable_and_then_recovers(postgres):
    store = await open_store(postgres.create_database())
    try:
        await store.start_turn(turn("t1"))
        postgres.stop()
        try:
            with pytest.raises(StoreUnavailable, match="the conversation store is unavailable"):
                await store.start_turn(turn("t2"))
        finally:
            postgres.start()
        t3 = turn("t3")
        await store.start_turn(t3)
        assert t3.index == 1
    finally:
        await store.close()


async def test_wrong_urls_fail_with_a_readable_message(postgres, tmp_path):
    good = postgres.create_database()
    for bad, words, kind in [("mysql://h/db", "unknown kind", StoreConfigError),
                             (good.replace(postgres.password, "wrong"), "password authentication failed", StoreError),
                             (good + "_missing", "does not exist", StoreError),
                             (postgres.url_for("x", port=1), "cannot reach", StoreError)]:
        with pytest.raises(kind, match=words) as caught:
            await open_store(bad)
        assert postgres.password not in caught.value.message


@pytest.mark.parametrize("command", [["-m", "orchestrator"], ["-m", "orchestrator.migrate"]])
def test_a_wrong_database_url_stops_the_process_at_start_with_one_readable_line(postgres, tmp_path, command):
    """What an operator sees: the process exits (no retry loop, no stack trace) naming the problem,
    and the password is not printed."""
    import os
    import subprocess
    import sys

    from helpers import ROOT, free_port

    wrong = postgres.create_database().replace(postgres.password, "not-the-password")
    env = {**os.environ, "VOICEBUS_DATABASE_URL": wrong, "VOICEBUS_DATA_DIR": str(tmp_path),
           "VOICEBUS_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}", "VOICEBUS_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    done = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "password authentication failed" in output and "Traceback" not in output, output
    assert "not-the-password" not in output
