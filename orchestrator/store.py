"""Conversations and turns: one store interface, two backends, one list of migrations.

`open_store(url)` picks the backend from `VOICEBUS_DATABASE_URL`: `sqlite:///path` (the
embedded default, orchestrator/store_sqlite.py) or `postgresql://user:password@host:port/db`
(many orchestrators on one database, orchestrator/store_postgres.py). A turn row is written
as soon as the user's words are known and updated when the turn ends, so a crash mid-answer
still leaves the question on record. Every write can be retried: a turn is keyed by its id
and `finish_turn` is an UPDATE, so a retry never duplicates what the first try stored.

`python -m orchestrator.migrate` (or `voicebus migrate`) runs the migrations alone;
the orchestrator also runs them at start.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.trace import SpanKind

from voicebus.telemetry import tracer
from voicebus.v1 import assistant_pb2, common_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """One step of the schema, the same version number on both backends (their SQL differs only
    where the engines do: REAL is 8 bytes in SQLite and 4 in PostgreSQL)."""

    version: int
    sqlite: str
    postgres: str


# Never edit an applied entry: add a new one.
MIGRATIONS: list[Migration] = [
    Migration(1, sqlite="""
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
        """, postgres="""
        CREATE TABLE conversations (
            id          TEXT PRIMARY KEY,
            created_at  DOUBLE PRECISION NOT NULL,
            updated_at  DOUBLE PRECISION NOT NULL,
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
            created_at      DOUBLE PRECISION NOT NULL,
            UNIQUE (conversation_id, idx)
        );
        CREATE INDEX conversations_by_update ON conversations(updated_at DESC);
        """),
    # Which orchestrator runs a turn: at start, one fails only the unfinished turns of owners that
    # are gone, not those another replica is running (orchestrator/store_postgres.py).
    Migration(2, sqlite="ALTER TABLE turns ADD COLUMN owner TEXT NOT NULL DEFAULT '';",
              postgres="ALTER TABLE turns ADD COLUMN owner TEXT NOT NULL DEFAULT '';"
                       "CREATE INDEX turns_unfinished ON turns(owner) WHERE outcome = 'TURN_OUTCOME_UNSPECIFIED';"),
]
SCHEMA_VERSION = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1)), "migration versions must be 1, 2, 3…"

# Outcomes whose texts are conversation history for the LLM.
HISTORY_OUTCOMES = ("TURN_OUTCOME_COMPLETED", "TURN_OUTCOME_INTERRUPTED")
RESTART_ERROR = "interrupted by a restart of the orchestrator"
ABANDONED_ERROR = "interrupted: the orchestrator running it stopped"


class StoreError(Exception):
    """The store cannot serve; `message` says why in words, `code` is the gRPC status for it."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StoreConfigError(StoreError):
    """VOICEBUS_DATABASE_URL cannot name a store (unknown scheme, no path, no database)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class StoreUnavailable(StoreError):
    """The database did not answer (down, unreachable, refused us): the caller may retry later."""

    code = grpc.StatusCode.UNAVAILABLE


def shown_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def operation(sql_operation: str = "", table: str = "") -> Callable[[F], F]:
    """Every public store call: a lost connection is tried once more (all calls are idempotent), and
    what is still failing is raised as `StoreUnavailable`. A write also gets a span (reads are quick
    and many): a slow disk or database shows in the turn's trace."""
    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def call(self: ConversationStore, *args: Any, **kwargs: Any) -> Any:
            for attempt in range(1, self.attempts + 1):
                try:
                    if not sql_operation:
                        return await method(self, *args, **kwargs)
                    with tracer("voicebus.store").start_as_current_span(
                            f"{self.system} {sql_operation} {table}", kind=SpanKind.CLIENT,
                            attributes={"db.system": self.system, "db.operation": sql_operation,
                                        "db.sql.table": table}):
                        return await method(self, *args, **kwargs)
                except self.unavailable_errors as exc:
                    if attempt == self.attempts:
                        raise StoreUnavailable(f"the conversation store is unavailable: {self.reason(exc)}") from None
                    log.warning("store call failed, trying again", extra={"fields": {
                        "call": method.__name__, "error": self.reason(exc)}})
                    await asyncio.sleep(self.retry_delay)
            raise AssertionError("unreachable")
        return call  # type: ignore[return-value]
    return decorate


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def seed_pairs(history: list[common_pb2.ChatMessage]) -> list[tuple[str, str]]:
    """Earlier messages a new conversation starts with, as (user, assistant) turns; system
    messages are not history."""
    pairs: list[list[str]] = []
    for message in history:
        if message.role == common_pb2.ROLE_USER:
            pairs.append([message.content, ""])
        elif message.role == common_pb2.ROLE_ASSISTANT:
            if pairs and not pairs[-1][1]:
                pairs[-1][1] = message.content
            else:
                pairs.append(["", message.content])
    return [(user, assistant) for user, assistant in pairs]


def new_turn_id() -> str:
    return uuid.uuid4().hex


def finished_values(turn: assistant_pb2.Turn) -> tuple[Any, ...]:
    """finish_turn's columns, in the order user_text, assistant_text, language, outcome,
    interrupted, timings, providers, error."""
    return (turn.user_text, turn.assistant_text, turn.language_code, assistant_pb2.TurnOutcome.Name(turn.outcome),
            int(turn.interrupted), json_format.MessageToJson(turn.timings, indent=None),
            json_format.MessageToJson(turn.providers, indent=None), turn.error_message)


def turn_from_row(row: Mapping[str, Any]) -> assistant_pb2.Turn:
    turn = assistant_pb2.Turn(
        turn_id=row["id"], conversation_id=row["conversation_id"], index=row["idx"], user_text=row["user_text"],
        assistant_text=row["assistant_text"], language_code=row["language"],
        outcome=assistant_pb2.TurnOutcome.Value(row["outcome"]), interrupted=bool(row["interrupted"]),
        error_message=row["error"], trace_id=row["trace_id"], created_at=timestamp(row["created_at"]))
    json_format.Parse(row["timings"], turn.timings)
    json_format.Parse(row["providers"], turn.providers)
    return turn


def conversation_from_row(row: Mapping[str, Any], turn_count: int) -> assistant_pb2.Conversation:
    return assistant_pb2.Conversation(conversation_id=row["id"], created_at=timestamp(row["created_at"]),
                                      updated_at=timestamp(row["updated_at"]), title=row["title"],
                                      turn_count=turn_count)


def history_messages(rows: list[Mapping[str, Any]]) -> list[common_pb2.ChatMessage]:
    """Turns, newest first, as chat messages oldest first."""
    messages: list[common_pb2.ChatMessage] = []
    for row in reversed(rows):
        if row["user_text"]:
            messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=row["user_text"]))
        if row["assistant_text"]:
            messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content=row["assistant_text"]))
    return messages


class ConversationStore(abc.ABC):
    """What the orchestrator asks of its database. `open()` connects and migrates; every other call
    raises `StoreUnavailable` when the database does not answer, and works again once it does."""

    system: ClassVar[str]  # OpenTelemetry's db.system
    unavailable_errors: ClassVar[tuple[type[BaseException], ...]]
    attempts: ClassVar[int] = 1
    retry_delay: ClassVar[float] = 0.2

    def __init__(self) -> None:
        self.owner = new_turn_id()  # this process, on the turns it runs
        self.schema: tuple[int, int] = (0, 0)  # version before and after open()'s migrations

    def reason(self, exc: BaseException) -> str:
        return str(exc) or exc.__class__.__name__

    @abc.abstractmethod
    def where(self) -> str:
        """The database, for messages (no password)."""

    async def open(self) -> None:
        """Connect and bring the schema up to SCHEMA_VERSION; any failure is a StoreError in words
        (a process that cannot open its store stops with one line, not a stack trace)."""
        try:
            await self._connect()
            self.schema = await self._migrate()
        except StoreError:
            await self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - a refused login, a missing database, no privilege…
            await self.close()
            raise StoreUnavailable(f"cannot open the conversation store {self.where()}: {self.reason(exc)}") from None

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreConfigError(f"the conversation store's schema is version {version}, newer than this "
                                   f"orchestrator's {SCHEMA_VERSION}: run the newer orchestrator, or an older database")

    @abc.abstractmethod
    async def _connect(self) -> None: ...

    @abc.abstractmethod
    async def _migrate(self) -> tuple[int, int]:
        """Apply the migrations after the stored version, atomically; (before, after)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def fail_unfinished(self) -> int:
        """Turns that a stopped orchestrator left without an outcome (it was killed mid-turn) are
        failed, with the reason; call once at start, before this process runs a turn."""

    async def fail_abandoned(self) -> int:
        """Turns left without an outcome by another orchestrator that has stopped since (killed
        mid-turn while this one runs), failed with ABANDONED_ERROR; safe at any time, also while
        this process runs turns. Only a shared store has other orchestrators: a SQLite file serves
        one process, whose own crash `fail_unfinished` at its next start covers."""
        return 0

    @abc.abstractmethod
    async def exists(self, conversation_id: str) -> bool: ...

    @abc.abstractmethod
    async def turn_count(self, conversation_id: str) -> int: ...

    @abc.abstractmethod
    async def start_turn(self, turn: assistant_pb2.Turn, seed: list[common_pb2.ChatMessage] | None = None) -> None:
        """Store a turn as soon as its user text is known; fills turn.index and turn.created_at.

        A conversation exists from its first stored turn on (a refused request leaves nothing
        behind); a new one is created here, with `seed` as its earlier turns. The same turn
        stored again (a retry) changes nothing."""

    @abc.abstractmethod
    async def finish_turn(self, turn: assistant_pb2.Turn) -> None: ...

    @abc.abstractmethod
    async def history(self, conversation_id: str, max_turns: int) -> list[common_pb2.ChatMessage]:
        """Earlier turns as chat messages, oldest first."""

    @abc.abstractmethod
    async def get(self, conversation_id: str, with_turns: bool = True) -> assistant_pb2.Conversation | None: ...

    @abc.abstractmethod
    async def list(self, limit: int, offset: int) -> tuple[list[assistant_pb2.Conversation], bool]:
        """Most recently updated first; the bool says whether more follow."""

    @abc.abstractmethod
    async def delete(self, conversation_id: str) -> bool: ...


def store_for(url: str, *, pool_size: int = 10, timeout: float = 10.0) -> ConversationStore:
    """The store a URL names, not yet opened; a URL that names none is a StoreConfigError."""
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        from orchestrator.store_sqlite import SqliteStore

        prefix, path = url[:len("sqlite://")], url[len("sqlite://"):]
        if prefix.lower() != "sqlite://" or not path.startswith("/") or len(path) < 2:
            raise StoreConfigError(f"VOICEBUS_DATABASE_URL {url!r}: a SQLite URL is sqlite:///path/to/file.db "
                                   "(three slashes, then the path: a fourth starts an absolute one)")
        return SqliteStore(Path(path[1:]), timeout=timeout)
    if scheme in ("postgresql", "postgres"):
        from orchestrator.store_postgres import PostgresStore

        parts = urlsplit(url)
        if not parts.path.strip("/"):
            raise StoreConfigError(f"VOICEBUS_DATABASE_URL {shown_url(url)!r} names no database: "
                                   "postgresql://user:password@host:port/database")
        if pool_size < 1:
            raise StoreConfigError(f"VOICEBUS_DATABASE_POOL_SIZE must be at least 1, not {pool_size}")
        return PostgresStore(url, pool_size=pool_size, timeout=timeout)
    raise StoreConfigError(f"VOICEBUS_DATABASE_URL {shown_url(url)!r}: unknown kind of database {scheme!r}; "
                           "use sqlite:///path/to/file.db or postgresql://user:password@host:port/database")


async def open_store(url: str, *, pool_size: int = 10, timeout: float = 10.0) -> ConversationStore:
    """The store a URL names, connected and migrated."""
    store = store_for(url, pool_size=pool_size, timeout=timeout)
    await store.open()
    return store
