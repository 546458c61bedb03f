"""What a local cluster run left behind, read from where it lies: the turn rows in PostgreSQL,
the events in the JetStream stream, and which orchestrator ran which turn (its log).

Used by tests/test_local_cluster.py (which asserts on them) and bench/cluster.py (which
counts them).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client

from cluster_traffic import Attempt
from helpers import ServiceProcess
from voicebus.bus import TURN_STREAM, TURN_SUBJECTS, turn_subject
from voicebus.names import label
from voicebus.v1 import events_pb2

# The events every completed turn publishes, whatever its input (first_audio_sent needs audio).
COMPLETED_TURN_EVENTS = ("turn_started", "transcript_final", "response_completed", "turn_completed")


@dataclass
class StoredEvent:
    event: events_pb2.TurnEvent
    stored_at: float  # when the stream stored it (the server's clock, time.time())

    @property
    def key(self) -> tuple[str, str]:
        return self.event.turn_id, label(events_pb2.TurnEventType, self.event.type)


async def stream_events(admin: Client, subjects: str = TURN_SUBJECTS) -> list[StoredEvent]:
    """Every event the turn stream holds (on `subjects`), oldest first."""
    js = admin.jetstream(timeout=10)
    subscription = await js.pull_subscribe(subjects, stream=TURN_STREAM)
    events: list[StoredEvent] = []
    try:
        expected = (await subscription.consumer_info()).num_pending
        while len(events) < expected:
            for msg in await subscription.fetch(min(500, expected - len(events)), timeout=10):
                events.append(StoredEvent(events_pb2.TurnEvent.FromString(msg.data),
                                          msg.metadata.timestamp.timestamp()))
                await msg.ack()
    finally:
        await subscription.unsubscribe()
    return events


async def stored_turn_ends(admin: Client) -> set[str]:
    """The turns whose `turn_completed` the stream holds."""
    return {e.event.turn_id for e in await stream_events(admin, turn_subject("*", "turn_completed"))}


def event_counts(events: list[StoredEvent]) -> collections.Counter[tuple[str, str]]:
    """How often each (turn id, event name) is in the stream: 1 each for a turn's events."""
    return collections.Counter(e.key for e in events)


async def stored_turns(database: Any) -> dict[str, dict[str, Any]]:
    """Every turn row by its id (an asyncpg connection)."""
    rows = await database.fetch("SELECT id, conversation_id, idx, user_text, assistant_text, outcome, error, owner "
                                "FROM turns ORDER BY conversation_id, idx")
    return {row["id"]: dict(row) for row in rows}


def half_written(row: dict[str, Any]) -> str:
    """Why a stored turn's columns disagree with its outcome, or ''."""
    outcome = row["outcome"]
    if outcome == "TURN_OUTCOME_UNSPECIFIED":
        return "no outcome"
    if outcome == "TURN_OUTCOME_COMPLETED" and not (row["user_text"] and row["assistant_text"]):
        return "completed without its texts"
    if outcome == "TURN_OUTCOME_FAILED" and not row["error"]:
        return "failed without a reason"
    return ""


def gaps(turns: dict[str, dict[str, Any]]) -> dict[str, list[int]]:
    """Conversations whose turn numbers are not 0, 1, 2, …, with their numbers."""
    numbers: dict[str, list[int]] = collections.defaultdict(list)
    for row in turns.values():
        numbers[row["conversation_id"]].append(row["idx"])
    return {c: sorted(n) for c, n in numbers.items() if sorted(n) != list(range(len(n)))}


@dataclass
class Audit:
    """The run's leftovers, checked against what the clients saw complete."""

    turns: dict[str, dict[str, Any]]
    events: list[StoredEvent]

    def missing_rows(self, completed: list[Attempt]) -> list[str]:
        """Completed turns whose row is absent or says something else than the client heard."""
        wrong = []
        for a in completed:
            row = self.turns.get(a.turn_id)
            if row is None:
                wrong.append(f"{a.client} {a.turn_id}: not stored")
            elif (row["outcome"], row["conversation_id"], row["user_text"], row["assistant_text"]) != (
                    "TURN_OUTCOME_COMPLETED", a.conversation_id or row["conversation_id"], a.user_text, a.answer):
                wrong.append(f"{a.client} {a.turn_id}: stored {row['outcome']} {row['user_text']!r} -> "
                             f"{row['assistant_text']!r}, heard {a.user_text!r} -> {a.answer!r}")
        return wrong

    def half_written(self) -> list[str]:
        return [f"{row['id']} ({row['conversation_id']} #{row['idx']}): {why}"
                for row in self.turns.values() if (why := half_written(row))]

    def duplicated_events(self) -> list[tuple[str, str]]:
        return [key for key, n in event_counts(self.events).items() if n > 1]

    def missing_events(self, completed: list[Attempt]) -> list[tuple[str, str]]:
        counts = event_counts(self.events)
        return [(a.turn_id, name) for a in completed for name in COMPLETED_TURN_EVENTS if not counts[(a.turn_id, name)]]

    def event_lag(self, completed: list[Attempt], clock_offset: float) -> dict[str, float]:
        """Per completed turn: seconds from the client hearing it end to its `turn_completed` being
        stored (negative: stored first). `clock_offset` turns time.monotonic into time.time."""
        stored = {e.event.turn_id: e.stored_at for e in self.events if e.key[1] == "turn_completed"}
        return {a.turn_id: stored[a.turn_id] - (a.ended + clock_offset) for a in completed if a.turn_id in stored}


def ran_turn(proc: ServiceProcess, turn_id: str) -> bool:
    """The orchestrator logged the end of that turn."""
    return any(turn_id in line and '"turn finished"' in line for line in proc.logs().splitlines())

