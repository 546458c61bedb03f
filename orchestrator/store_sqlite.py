"""The embedded store: one SQLite file (aiosqlite, WAL), for one orchestrator process.

The schema version is SQLite's `user_version`. Writes of this process go one at a time (one
connection, one lock), so a turn's statements never interleave with another turn's.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite

from orchestrator.store import (HISTORY_OUTCOMES, MIGRATIONS, RESTART_ERROR, ConversationStore, conversation_from_row,
                                finished_values, history_messages, new_turn_id, operation, seed_pairs, timestamp,
                                turn_from_row)
from voicebus.v1 import assistant_pb2, common_pb2


class SqliteStore(ConversationStore):
    system = "sqlite"
    # A full disk, a file that cannot be opened, a lock held past the busy timeout.
    unavailable_errors = (sqlite3.OperationalError,)

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__()
        self.path, self.timeout = path, timeout
        self.db: aiosqlite.Connection | None = None
        self._write = asyncio.Lock()

    def where(self) -> str:
        return f"sqlite:///{self.path}"

    async def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = await aiosqlite.connect(self.path, timeout=self.timeout)
        self.db.row_factory = aiosqlite.Row
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.execute("PRAGMA foreign_keys=ON")

    async def _version(self) -> int:
        assert self.db
        return int((await (await self.db.execute("PRAGMA user_version")).fetchone())[0])

    async def _migrate(self) -> tuple[int, int]:
        assert self.db
        await self.db.commit()
        # BEGIN IMMEDIATE takes the write lock before the version is read: a second process
        # opening the same file waits, then finds the migrations applied.
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            before = await self._version()
            self._check_version(before)
            for migration in MIGRATIONS[before:]:
                for statement in filter(str.strip, migration.sqlite.split(";")):
                    await self.db.execute(statement)
                await self.db.execute(f"PRAGMA user_version = {migration.version}")
            await self.db.commit()
        except BaseException:
            await self.db.rollback()
            raise
        return before, await self._version()

    async def close(self) -> None:
        if self.db:
            await self.db.close()
            self.db = None

    async def _one(self, sql: str, *args: Any) -> Any:
        assert self.db
        async with self.db.execute(sql, args) as cur:
            return await cur.fetchone()

    @operation("UPDATE", "turns")
    async def fail_unfinished(self) -> int:
        """All of them: a SQLite file serves one orchestrator process."""
        assert self.db
        async with self._write:
            cur = await self.db.execute(
                "UPDATE turns SET outcome = 'TURN_OUTCOME_FAILED', error = ? WHERE outcome = 'TURN_OUTCOME_UNSPECIFIED'",
                (RESTART_ERROR,))
            await self.db.commit()
        return cur.rowcount

    @operation()
    async def exists(self, conversation_id: str) -> bool:
        return await self._one("SELECT 1 FROM conversations WHERE id = ?", conversation_id) is not None

    @operation()
    async def turn_count(self, conversation_id: str) -> int:
        return int((await self._one("SELECT COUNT(*) FROM turns WHERE conversation_id = ?", conversation_id))[0])

    @operation("INSERT", "turns")
    async def start_turn(self, turn: assistant_pb2.Turn, seed: list[common_pb2.ChatMessage] | None = None) -> None:
        assert self.db
        async with self._write:
            try:
                await self._start_turn(turn, seed)
                await self.db.commit()
            except BaseException:
                await self.db.rollback()
                raise

    async def _start_turn(self, turn: assistant_pb2.Turn, seed: list[common_pb2.ChatMessage] | None) -> None:
        assert self.db
        if stored := await self._one("SELECT idx, created_at FROM turns WHERE id = ?", turn.turn_id):
            turn.index = stored["idx"]  # stored before: this is a retry
            turn.created_at.CopyFrom(timestamp(stored["created_at"]))
            return
        now = time.time()
        cid = turn.conversation_id
        cur = await self.db.execute("INSERT OR IGNORE INTO conversations (id, created_at, updated_at) VALUES (?, ?, ?)",
                                    (cid, now, now))
        if cur.rowcount and seed:
            pairs = seed_pairs(seed)
            await self.db.executemany(
                "INSERT INTO turns (id, conversation_id, idx, user_text, assistant_text, outcome, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'TURN_OUTCOME_COMPLETED', ?)",
                [(new_turn_id(), cid, idx, user, assistant, now) for idx, (user, assistant) in enumerate(pairs)])
            if pairs:
                await self.db.execute("UPDATE conversations SET title = ? WHERE id = ?", (pairs[0][0][:80], cid))
        turn.index = (await self._one("SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE conversation_id = ?", cid))[0]
        turn.created_at.CopyFrom(timestamp(now))
        await self.db.execute(
            "INSERT INTO turns (id, conversation_id, idx, user_text, language, trace_id, created_at, owner) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (turn.turn_id, cid, turn.index, turn.user_text, turn.language_code, turn.trace_id, now, self.owner))
        await self.db.execute(
            "UPDATE conversations SET updated_at = ?, title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
            (now, turn.user_text[:80], cid))

    @operation("UPDATE", "turns")
    async def finish_turn(self, turn: assistant_pb2.Turn) -> None:
        assert self.db
        async with self._write:
            await self.db.execute(
                "UPDATE turns SET user_text = ?, assistant_text = ?, language = ?, outcome = ?, interrupted = ?, "
                "timings = ?, providers = ?, error = ? WHERE id = ?", (*finished_values(turn), turn.turn_id))
            await self.db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?",
                                  (time.time(), turn.conversation_id))
            await self.db.commit()

    @operation()
    async def history(self, conversation_id: str, max_turns: int) -> list[common_pb2.ChatMessage]:
        assert self.db
        rows = await (await self.db.execute(
            f"SELECT user_text, assistant_text FROM turns WHERE conversation_id = ? "
            f"AND outcome IN ({','.join('?' * len(HISTORY_OUTCOMES))}) ORDER BY idx DESC LIMIT ?",
            (conversation_id, *HISTORY_OUTCOMES, max_turns))).fetchall()
        return history_messages(rows)

    @operation()
    async def get(self, conversation_id: str, with_turns: bool = True) -> assistant_pb2.Conversation | None:
        assert self.db
        row = await self._one("SELECT * FROM conversations WHERE id = ?", conversation_id)
        if row is None:
            return None
        turns = await (await self.db.execute("SELECT * FROM turns WHERE conversation_id = ? ORDER BY idx",
                                             (conversation_id,))).fetchall()
        conversation = conversation_from_row(row, len(turns))
        if with_turns:
            conversation.turns.extend(turn_from_row(t) for t in turns)
        return conversation

    @operation()
    async def list(self, limit: int, offset: int) -> tuple[list[assistant_pb2.Conversation], bool]:
        assert self.db
        rows = await (await self.db.execute(
            "SELECT c.*, (SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id) AS n FROM conversations c "
            "ORDER BY updated_at DESC, id LIMIT ? OFFSET ?", (limit + 1, offset))).fetchall()
        return [conversation_from_row(r, r["n"]) for r in rows[:limit]], len(rows) > limit

    @operation("DELETE", "conversations")
    async def delete(self, conversation_id: str) -> bool:
        assert self.db
        async with self._write:
            cur = await self.db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            await self.db.commit()
        return cur.rowcount > 0
