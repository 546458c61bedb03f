"""Conversations and turns in SQLite (aiosqlite, WAL), with a versioned schema.

A turn row is written as soon as the user's words are known and updated when the turn
ends, so a crash mid-answer still leaves the question on record.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.trace import SpanKind

from voicebus.telemetry import tracer
from voicebus.v1 import assistant_pb2, common_pb2

# Each entry moves the schema one version up; never edit an applied entry, add a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE conversations (
        id          TEXT PRIMARY KEY,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        title       TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE turns (
        id              TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        idx             INTEGER NOT NULL,
        user_text       TEXT NOT NULL DEFAULT '',
        assistant_text  TEXT NOT NULL DEFAULT '',
        language        TEXT NOT NULL DEFAULT '',
        outcome         TEXT NOT NULL DEFAULT 'TURN_OUTCOME_UNSPECIFIED',
        interrupted     INTEGER NOT NULL DEFAULT 0,
        timings         TEXT NOT NULL DEFAULT '{}',
        providers       TEXT NOT NULL DEFAULT '{}',
        error           TEXT NOT NULL DEFAULT '',
        trace_id        TEXT NOT NULL DEFAULT '',
        created_at      REAL NOT NULL,
        UNIQUE (conversation_id, idx)
    );
    CREATE INDEX conversations_by_update ON conversations(updated_at DESC);
    """,
]

# Outcomes whose texts are conversation history for the LLM.
HISTORY_OUTCOMES = ("TURN_OUTCOME_COMPLETED", "TURN_OUTCOME_INTERRUPTED")


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _traced_write(operation: str, table: str) -> Callable[[F], F]:
    """A span per write (reads are quick and many): a slow disk shows in the turn's trace."""
    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            with tracer("voicebus.store").start_as_current_span(
                    f"sqlite {operation} {table}", kind=SpanKind.CLIENT,
                    attributes={"db.system": "sqlite", "db.operation": operation, "db.sql.table": table}):
                return await method(*args, **kwargs)
        return traced  # type: ignore[return-value]
    return decorate


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class ConversationStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = await aiosqlite.connect(self.path)
        self.db.row_factory = aiosqlite.Row
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.execute("PRAGMA foreign_keys=ON")
        await self._migrate()

    async def _migrate(self) -> None:
        assert self.db
        version = (await (await self.db.execute("PRAGMA user_version")).fetchone())[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    async def fail_unfinished(self) -> int:
        """Turns a previous run left without an outcome (it was killed mid-turn) are failed, with the
        reason; call once at start, when no turn of this process is running."""
        assert self.db
        cur = await self.db.execute(
            "UPDATE turns SET outcome = 'TURN_OUTCOME_FAILED', error = 'interrupted by a restart of the orchestrator' "
            "WHERE outcome = 'TURN_OUTCOME_UNSPECIFIED'")
        await self.db.commit()
        return cur.rowcount

    async def close(self) -> None:
        if self.db:
            await self.db.close()
            self.db = None

    async def _seed(self, cid: str, history: list[common_pb2.ChatMessage], now: float) -> int:
        """Earlier user/assistant messages a new conversation starts with, as completed turns."""
        assert self.db
        pairs: list[list[str]] = []  # [user, assistant] per earlier turn; system messages are not history
        for message in history:
            if message.role == common_pb2.ROLE_USER:
                pairs.append([message.content, ""])
            elif message.role == common_pb2.ROLE_ASSISTANT:
                if pairs and not pairs[-1][1]:
                    pairs[-1][1] = message.content
                else:
                    pairs.append(["", message.content])
        for idx, (user, assistant) in enumerate(pairs):
            await self.db.execute(
                "INSERT INTO turns (id, conversation_id, idx, user_text, assistant_text, outcome, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'TURN_OUTCOME_COMPLETED', ?)",
                (uuid.uuid4().hex, cid, idx, user, assistant, now))
        if pairs:
            await self.db.execute("UPDATE conversations SET title = ? WHERE id = ?", (pairs[0][0][:80], cid))
        return len(pairs)

    async def exists(self, conversation_id: str) -> bool:
        assert self.db
        row = await (await self.db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,))).fetchone()
        return row is not None

    async def turn_count(self, conversation_id: str) -> int:
        assert self.db
        row = await (await self.db.execute("SELECT COUNT(*) FROM turns WHERE conversation_id = ?",
                                           (conversation_id,))).fetchone()
        return int(row[0])

    @_traced_write("INSERT", "turns")
    async def start_turn(self, turn: assistant_pb2.Turn, seed: list[common_pb2.ChatMessage] | None = None) -> None:
        """Store a turn as soon as its user text is known; fills turn.index.

        A conversation exists from its first stored turn on (a refused request leaves nothing
        behind); a new one is created here, with `seed` as its earlier turns."""
        assert self.db
        now = time.time()
        cur = await self.db.execute("INSERT OR IGNORE INTO conversations (id, created_at, updated_at) "
                                    "VALUES (?, ?, ?)", (turn.conversation_id, now, now))
        if cur.rowcount and seed:
            await self._seed(turn.conversation_id, seed, now)
        async with self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE conversation_id = ?",
                                   (turn.conversation_id,)) as cur:
            turn.index = (await cur.fetchone())[0]
        turn.created_at.CopyFrom(_timestamp(now))
        await self.db.execute(
            "INSERT INTO turns (id, conversation_id, idx, user_text, language, trace_id, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (turn.turn_id, turn.conversation_id, turn.index, turn.user_text, turn.language_code, turn.trace_id, now))
        title = turn.user_text[:80]
        await self.db.execute(
            "UPDATE conversations SET updated_at = ?, title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
            (now, title, turn.conversation_id))
        await self.db.commit()

    @_traced_write("UPDATE", "turns")
    async def finish_turn(self, turn: assistant_pb2.Turn) -> None:
        assert self.db
        await self.db.execute(
            "UPDATE turns SET user_text = ?, assistant_text = ?, language = ?, outcome = ?, interrupted = ?, "
            "timings = ?, providers = ?, error = ? WHERE id = ?",
            (turn.user_text, turn.assistant_text, turn.language_code, assistant_pb2.TurnOutcome.Name(turn.outcome),
             int(turn.interrupted), json_format.MessageToJson(turn.timings, indent=None),
             json_format.MessageToJson(turn.providers, indent=None), turn.error_message, turn.turn_id))
        await self.db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?",
                              (time.time(), turn.conversation_id))
        await self.db.commit()

    async def history(self, conversation_id: str, max_turns: int) -> list[common_pb2.ChatMessage]:
        """Earlier turns as chat messages, oldest first."""
        assert self.db
        rows = await (await self.db.execute(
            f"SELECT user_text, assistant_text FROM turns WHERE conversation_id = ? "
            f"AND outcome IN ({','.join('?' * len(HISTORY_OUTCOMES))}) ORDER BY idx DESC LIMIT ?",
            (conversation_id, *HISTORY_OUTCOMES, max_turns))).fetchall()
        messages: list[common_pb2.ChatMessage] = []
        for row in reversed(rows):
            if row["user_text"]:
                messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=row["user_text"]))
            if row["assistant_text"]:
                messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content=row["assistant_text"]))
        return messages

    @staticmethod
    def _turn(row: aiosqlite.Row) -> assistant_pb2.Turn:
        turn = assistant_pb2.Turn(
            turn_id=row["id"], conversation_id=row["conversation_id"], index=row["idx"], user_text=row["user_text"],
            assistant_text=row["assistant_text"], language_code=row["language"],
            outcome=assistant_pb2.TurnOutcome.Value(row["outcome"]), interrupted=bool(row["interrupted"]),
            error_message=row["error"], trace_id=row["trace_id"], created_at=_timestamp(row["created_at"]))
        json_format.Parse(row["timings"], turn.timings)
        json_format.Parse(row["providers"], turn.providers)
        return turn

    async def get(self, conversation_id: str, with_turns: bool = True) -> assistant_pb2.Conversation | None:
        assert self.db
        row = await (await self.db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,))).fetchone()
        if row is None:
            return None
        conversation = assistant_pb2.Conversation(
            conversation_id=row["id"], created_at=_timestamp(row["created_at"]),
            updated_at=_timestamp(row["updated_at"]), title=row["title"])
        turns = await (await self.db.execute("SELECT * FROM turns WHERE conversation_id = ? ORDER BY idx",
                                             (conversation_id,))).fetchall()
        conversation.turn_count = len(turns)
        if with_turns:
            conversation.turns.extend(self._turn(t) for t in turns)
        return conversation

    async def list(self, limit: int, offset: int) -> tuple[list[assistant_pb2.Conversation], bool]:
        """Most recently updated first; the bool says whether more follow."""
        assert self.db
        rows = await (await self.db.execute(
            "SELECT c.*, (SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id) AS n FROM conversations c "
            "ORDER BY updated_at DESC, id LIMIT ? OFFSET ?", (limit + 1, offset))).fetchall()
        conversations = [
            assistant_pb2.Conversation(conversation_id=r["id"], created_at=_timestamp(r["created_at"]),
                                       updated_at=_timestamp(r["updated_at"]), title=r["title"], turn_count=r["n"])
            for r in rows[:limit]]
        return conversations, len(rows) > limit

    @_traced_write("DELETE", "conversations")
    async def delete(self, conversation_id: str) -> bool:
        assert self.db
        cur = await self.db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        await self.db.commit()
        return cur.rowcount > 0
