"""Issue 16, item 5: the whole stack as a cluster on loopback survives kill -9 of its parts.

tests/local_cluster.py starts PostgreSQL, a 3-node NATS cluster (R3 turn stream), two
orchestrators, two STT replicas, one LLM, one TTS and the gateway; tests/cluster_scenario.py
runs typed, spoken and REST clients (tests/cluster_traffic.py) without pause while it kills,
in turn, the turn stream's leading NATS node, the orchestrator of the `memory` conversation
and an STT replica. Then, from the clients' records, PostgreSQL and the JetStream stream:

- every try of a turn ended within its bound: completed, or with an error that says what
  happened (the client then retried, and every question was answered in the end);
- every completed turn is stored once, with the words the client sent and the answer it got,
  and no stored turn is half-written (each has an outcome consistent with its columns, turn
  numbers without gaps);
- every completed turn's events are in the stream, and no event of any turn is there twice;
- the `memory` conversation went on on the other orchestrator with its history.

No assertion is on time: waits are bounded polls, and time only bounds a hang.
"""

from __future__ import annotations

import collections

import httpx
import pytest

from cluster_audit import Audit, gaps, ran_turn, stored_turns, stream_events
from cluster_scenario import run_with_kills
from cluster_traffic import Attempt
from helpers import eventually
from local_cluster import AUTH, ORCHESTRATORS, LocalCluster

pytestmark = pytest.mark.slow
# What a try may end with besides completing, each with words for the user; `no_speech` is the
# spoken "please say that again". (`interrupted` would be a barge-in nobody made.)
CLEAR_ENDINGS = {"failed", "lost", "refused", "error"}


def cut_by_a_kill(a: Attempt) -> bool:
    """The try died with its orchestrator: the stream moved, ended, or the call got a 5xx."""
    return a.outcome in ("lost", "error") or a.outcome == "refused" and a.detail[:1] == "5"


@pytest.fixture(scope="module")
async def cluster_run(tmp_path_factory):
    async with LocalCluster("local-cluster") as cluster:
        run = await run_with_kills(cluster, tmp_path_factory.mktemp("cluster-speech"))
        yield cluster, run


def test_every_try_ended_and_every_question_was_answered(cluster_run) -> None:
    _, run = cluster_run
    attempts = run.traffic.attempts
    hung = [(a.client, a.question, a.detail) for a in attempts if a.outcome == "timeout"]
    assert not hung, f"tries that never ended: {hung}"
    unclear = [(a.client, a.outcome, a.detail) for a in attempts if a.outcome not in ("completed", "no_speech")
               and (a.outcome not in CLEAR_ENDINGS or not a.detail)]
    assert not unclear, f"tries that ended without saying why: {unclear}"
    # "Another turn is running" is true only while a killed orchestrator's lease lasts, that is
    # after a try of the same question that the kill cut short; else a lease outlived its turn.
    tries = collections.defaultdict(list)
    for a in attempts:
        tries[(a.client, a.asked)].append(a)
    wrongly_refused = [(a.client, a.question, a.number) for question in tries.values() for i, a in enumerate(question)
                       if "409 aborted" in a.detail and not any(cut_by_a_kill(b) for b in question[:i])]
    assert not wrongly_refused, f"turns refused as busy with no turn running: {wrongly_refused}"
    last_try = {(a.client, a.asked): a for a in attempts}
    unanswered = [(a.client, a.question, a.outcome, a.detail) for a in last_try.values() if a.outcome != "completed"]
    assert not unanswered, f"questions that retries did not get answered: {unanswered}"
    assert {a.kind for a in run.traffic.completed()} == {"typed", "spoken", "rest"}


async def test_completed_turns_are_stored_once_and_none_half_written(cluster_run) -> None:
    cluster, run = cluster_run
    completed = run.traffic.completed()
    database = await cluster.database()

    async def settled() -> Audit:
        """The rows, once none is half-written: a turn its orchestrator was running when killed
        gets its outcome from the survivor's next sweep (orchestrator.__main__.fail_abandoned_turns)."""
        audit = Audit(await stored_turns(database), [])
        assert not audit.half_written(), audit.half_written()
        return audit
    try:
        audit = await eventually(settled, "every stored turn to have an outcome", timeout=60)
    finally:
        await database.close()
    assert len({a.turn_id for a in completed}) == len(completed), "one turn id completed twice"
    assert not audit.missing_rows(completed)
    assert not gaps(audit.turns)


async def test_every_completed_turn_has_its_events_once(cluster_run) -> None:
    cluster, run = cluster_run
    admin = await cluster.admin()
    try:
        # a JetStream API call that times out while the cluster is busy is tried again
        audit = Audit({}, await eventually(lambda: stream_events(admin), "the turn stream read back", timeout=60))
    finally:
        await admin.close()
    assert not audit.duplicated_events()
    completed = {a.turn_id: a for a in run.traffic.completed()}
    missing = collections.defaultdict(list)
    for turn_id, name in audit.missing_events(list(completed.values())):
        missing[turn_id].append(name)
    where = {t: next((n for n in ORCHESTRATORS if ran_turn(cluster.procs[n], t)), "?") for t in missing}
    assert not missing, [f"{completed[t].client} {t} on {where[t]}, ended {run.since_kills(completed[t].ended)}: "
                         f"no {', '.join(names)}" for t, names in missing.items()]


async def test_the_memory_conversation_moved_with_its_history(cluster_run) -> None:
    cluster, run = cluster_run
    killed = run.kill("orchestrator")
    survivor = next(n for n in ORCHESTRATORS if n != killed.victim)
    memory = [a for a in run.traffic.completed() if a.client == "memory"]
    before = [a for a in memory if a.ended < killed.at]
    after = [a for a in memory if a.started > killed.at]
    cid = run.clients["memory"].conversation_id
    assert before and after and {a.conversation_id for a in memory} == {cid}
    assert all(ran_turn(cluster.procs[killed.victim], a.turn_id) for a in before)
    assert all(ran_turn(cluster.procs[survivor], a.turn_id) for a in after)
    moved = [m for m in run.traffic.moves if m["client"] == "memory"]
    assert [(m["conversation_id"], m["created"]) for m in moved] == [(cid, False)], moved
    assert moved[0]["turn_count"] >= len(before)  # the history was there on the other orchestrator
    assert after[0].index >= moved[0]["turn_count"]
    async with httpx.AsyncClient(base_url=cluster.base, headers=AUTH, timeout=30) as http:
        stored = (await http.get(f"/api/conversations/{cid}")).json()
    by_id = {t["turn_id"]: t for t in stored["turns"]}
    assert [by_id[a.turn_id]["index"] for a in memory] == sorted(by_id[a.turn_id]["index"] for a in memory)
    assert [by_id[a.turn_id]["user_text"] for a in memory] == [a.question for a in memory]
    counts = collections.Counter(t["outcome"] for t in stored["turns"])
    assert counts["completed"] == len(memory), counts
