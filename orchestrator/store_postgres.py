"""The shared store: PostgreSQL through an asyncpg pool, for any number of orchestrators.

- Migrations run in one transaction under a transaction-level advisory lock: orchestrators
  that start together apply them once; the others wait, then find them applied. The version
  is kept in the table `schema_version` (one row per applied migration).
- `start_turn` creates the conversation (`INSERT … ON CONFLICT DO NOTHING`), locks its row and
  numbers the turn MAX(idx)+1, all in one transaction: turns started at once on two
  orchestrators get different numbers, one after the other.
- Each process holds a session-level advisory lock named after its owner id on a connection of
  its own for as long as it runs. At start, `fail_unfinished` fails only the turns of owners
  whose lock is free (their process is gone: PostgreSQL releases a session's locks when its
  connection ends), never those of an orchestrator that is running them; `fail_abandoned`
  does the same while this process runs (the orchestrator calls it every few seconds), so a
  replica killed mid-turn leaves no turn without an outcome while the others go on.
- A call that loses its connection is tried once more on another (every call is idempotent);
  a call that still fails raises `StoreUnavailable`. The pool reconnects by itself once the
  server is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg
from asyncpg import exceptions as pg

from orchestrator.store import (ABANDONED_ERROR, HISTORY_OUTCOMES, MIGRATIONS, RESTART_ERROR, ConversationStore,
                                conversation_from_row, finished_values, history_messages, new_turn_id, operation,
                                seed_pairs, shown_url, timestamp, turn_from_row)
from voicebus.v1 import assistant_pb2, common_pb2

MIGRATION_LOCK = 0x766F6963_65627573  # "voicebus": pg_advisory_xact_lock(bigint) while migrating
OWNER_LOCKS = 0x766F6963  # "voic": pg_advisory_lock(OWNER_LOCKS, owner_key(owner)) while a process runs


def owner_key(owner: str) -> int:
    """An owner id as the signed 32-bit second key of its advisory lock."""
    return int.from_bytes(hashlib.blake2b(owner.encode(), digest_size=4).digest(), "big", signed=True)


class PostgresStore(ConversationStore):
    system = "postgresql"
    unavailable_errors = (
        OSError, TimeoutError,  # refused, unreachable, no answer in time
        pg.PostgresConnectionError, pg.InterfaceError,  # the connection is gone
        pg.OperatorInterventionError,  # the server is shutting down or starting up
        pg.InsufficientResourcesError,  # too many connections, disk full
        pg.InvalidAuthorizationSpecificationError, pg.InvalidCatalogNameError,  # a bad password, no such database
    )
    attempts = 2

    def __init__(self, url: str, pool_size: int = 10, timeout: float = 10.0) -> None:
        super().__init__()
        self.url, self.pool_size, self.timeout = url, pool_size, timeout
        self.pool: asyncpg.Pool | None = None
        self._owner_connection: asyncpg.Connection | None = None
        parts = urlsplit(url)
        self._address = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"

    def where(self) -> str:
        return shown_url(self.url)

    def reason(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer from {self._address} within {self.timeout:g} s"
        if isinstance(exc, OSError):
            return f"cannot reach {self._address} ({exc.strerror or exc})"
        return super().reason(exc)

    async def _connect(self) -> None:
        self.pool = await asyncpg.create_pool(
            # min_size=0: a pool that keeps a floor of connections logs a stack trace per retry during an
            # outage; open() checks the server anyway (owner lock, migrations).
            self.url, min_size=0, max_size=self.pool_size, timeout=self.timeout, command_timeout=self.timeout,
            server_settings={"application_name": "voicebus-orchestrator"})
        await self._hold_owner_lock()

    async def _hold_owner_lock(self) -> None:
        if self._owner_connection is not None and not self._owner_connection.is_closed():
            return
        connection = await asyncpg.connect(self.url, timeout=self.timeout, command_timeout=self.timeout,
                                           server_settings={"application_name": "voicebus-orchestrator-owner"})
        await connection.execute("SELECT pg_advisory_lock($1, $2)", OWNER_LOCKS, owner_key(self.owner))
        self._owner_connection = connection

    @asynccontextmanager
    async def _transaction(self, **options: object) -> AsyncIterator[asyncpg.Connection]:
        assert self.pool
        async with self.pool.acquire(timeout=self.timeout) as connection, connection.transaction(**options):
            yield connection

    async def _migrate(self) -> tuple[int, int]:
        async with self._transaction() as c:
            await c.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await c.execute("CREATE TABLE IF NOT EXISTS schema_version "
                            "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
            before = await c.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            self._check_version(before)
            for migration in MIGRATIONS[before:]:
                await c.execute(migration.postgres)
                await c.execute("INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                                migration.version, time.time())
            return before, await c.fetchval("SELECT MAX(version) FROM schema_version")

    async def close(self) -> None:
        if self._owner_connection is not None:
            self._owner_connection.terminate()
            self._owner_connection = None
        if self.pool is not None:
            pool, self.pool = self.pool, None
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except (TimeoutError, *self.unavailable_errors):
                pool.terminate()

    @operation("UPDATE", "turns")
    async def fail_unfinished(self) -> int:
        return await self._fail_turns_of_stopped_owners(RESTART_ERROR)

    @operation("UPDATE", "turns")
    async def fail_abandoned(self) -> int:
        return await self._fail_turns_of_stopped_owners(ABANDONED_ERROR)

    async def _fail_turns_of_stopped_owners(self, reason: str) -> int:
        assert self.pool
        failed = 0
        async with self.pool.acquire(timeout=self.timeout) as c:
            owners = [r["owner"] for r in await c.fetch(
                "SELECT DISTINCT owner FROM turns WHERE outcome = 'TURN_OUTCOME_UNSPECIFIED'")]
            for owner in owners:
                key = owner_key(owner)
                if owner == self.owner or not await c.fetchval("SELECT pg_try_advisory_lock($1, $2)", OWNER_LOCKS, key):
                    continue  # its orchestrator is running: it ends its own turns
                try:
                    status = await c.execute(
                        "UPDATE turns SET outcome = 'TURN_OUTCOME_FAILED', error = $1 "
                        "WHERE owner = $2 AND outcome = 'TURN_OUTCOME_UNSPECIFIED'", reason, owner)
                    failed += int(status.split()[-1])
                finally:
                    await c.execute("SELECT pg_advisory_unlock($1, $2)", OWNER_LOCKS, key)
        return failed

    @operation()
    async def exists(self, conversation_id: str) -> bool:
        assert self.pool
        return await self.pool.fetchval("SELECT 1 FROM conversations WHERE id = $1", conversation_id,
                                        timeout=self.timeout) is not None

    @operation()
    async def turn_count(self, conversation_id: str) -> int:
        assert self.pool
        return int(await self.pool.fetchval("SELECT COUNT(*) FROM turns WHERE conversation_id = $1",
                                            conversation_id, timeout=self.timeout))

    @operation("INSERT", "turns")
    async def start_turn(self, turn: assistant_pb2.Turn, seed: list[common_pb2.ChatMessage] | None = None) -> None:
        await self._hold_owner_lock()  # again, if an outage took its connection
        cid = turn.conversation_id
        async with self._transaction() as c:
            now = time.time()
            created = await c.fetchval("INSERT INTO conversations (id, created_at, updated_at) VALUES ($1, $2, $2) "
                                       "ON CONFLICT (id) DO NOTHING RETURNING TRUE", cid, now)
            if not created:  # the conversation's row lock orders its turns across orchestrators
                await c.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", cid)
            if stored := await c.fetchrow("SELECT idx, created_at FROM turns WHERE id = $1", turn.turn_id):
                turn.index = stored["idx"]  # stored before: this is a retry
                turn.created_at.CopyFrom(timestamp(stored["created_at"]))
                return
            if created and seed:
                pairs = seed_pairs(seed)
                await c.executemany(
                    "INSERT INTO turns (id, conversation_id, idx, user_text, assistant_text, outcome, created_at) "
                    "VALUES ($1, $2, $3, $4, $5, 'TURN_OUTCOME_COMPLETED', $6)",
                    [(new_turn_id(), cid, idx, user, assistant, now) for idx, (user, assistant) in enumerate(pairs)])
                if pairs:
                    await c.execute("UPDATE conversations SET title = $1 WHERE id = $2", pairs[0][0][:80], cid)
            turn.index = await c.fetchval("SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE conversation_id = $1", cid)
            turn.created_at.CopyFrom(timestamp(now))
            await c.execute(
                "INSERT INTO turns (id, conversation_id, idx, user_text, language, trace_id, created_at, owner) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                turn.turn_id, cid, turn.index, turn.user_text, turn.language_code, turn.trace_id, now, self.owner)
            await c.execute("UPDATE conversations SET updated_at = $1, "
                            "title = CASE WHEN title = '' THEN $2 ELSE title END WHERE id = $3",
                            now, turn.user_text[:80], cid)

    @operation("UPDATE", "turns")
    async def finish_turn(self, turn: assistant_pb2.Turn) -> None:
        async with self._transaction() as c:
            await c.execute(
                "UPDATE turns SET user_text = $1, assistant_text = $2, language = $3, outcome = $4, interrupted = $5, "
                "timings = $6, providers = $7, error = $8 WHERE id = $9", *finished_values(turn), turn.turn_id)
            await c.execute("UPDATE conversations SET updated_at = $1 WHERE id = $2", time.time(),
                            turn.conversation_id)

    @operation()
    async def history(self, conversation_id: str, max_turns: int) -> list[common_pb2.ChatMessage]:
        assert self.pool
        rows = await self.pool.fetch(
            "SELECT user_text, assistant_text FROM turns WHERE conversation_id = $1 AND outcome = ANY($2::text[]) "
            "ORDER BY idx DESC LIMIT $3", conversation_id, list(HISTORY_OUTCOMES), max_turns, timeout=self.timeout)
        return history_messages(rows)

    @operation()
    async def get(self, conversation_id: str, with_turns: bool = True) -> assistant_pb2.Conversation | None:
        async with self._transaction(isolation="repeatable_read", readonly=True) as c:  # one snapshot for both
            row = await c.fetchrow("SELECT * FROM conversations WHERE id = $1", conversation_id)
            if row is None:
                return None
            turns = await c.fetch("SELECT * FROM turns WHERE conversation_id = $1 ORDER BY idx", conversation_id)
        conversation = conversation_from_row(row, len(turns))
        if with_turns:
            conversation.turns.extend(turn_from_row(t) for t in turns)
        return conversation

    @operation()
    async def list(self, limit: int, offset: int) -> tuple[list[assistant_pb2.Conversation], bool]:
        assert self.pool
        rows = await self.pool.fetch(
            "SELECT c.*, (SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id) AS n FROM conversations c "
            "ORDER BY updated_at DESC, id LIMIT $1 OFFSET $2", limit + 1, offset, timeout=self.timeout)
        return [conversation_from_row(r, r["n"]) for r in rows[:limit]], len(rows) > limit

    @operation("DELETE", "conversations")
    async def delete(self, conversation_id: str) -> bool:
        async with self._transaction() as c:
            status = await c.execute("DELETE FROM conversations WHERE id = $1", conversation_id)
        return status != "DELETE 0"
