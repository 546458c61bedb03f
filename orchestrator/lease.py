"""Turn leases across orchestrator replicas: at most one running turn per conversation.

`Conversations.claim` takes this process's claim first (the fast path: a second turn on a
stream of this process is refused without a round trip), then a lease in the NATS KV bucket
`voicebus_turn_leases`: `create` writes the key only if it does not exist, so of two
orchestrators starting a turn in one conversation at once exactly one gets it and the other
refuses its turn with ABORTED, as a second turn in one process always was. The holder renews
the key (`update` with the revision it last wrote) every third of the lease while the turn
runs and deletes it (with that revision, so never someone else's) when the turn ends.

A holder that dies (kill -9, a lost machine) renews nothing: its lease is gone after
VOICEBUS_TURN_LEASE_SECONDS and another orchestrator takes the conversation. A lease that its
living holder could not delete (NATS did not answer in time, e.g. while a node's death elects
new leaders) would refuse that conversation's next turn until the TTL; the process that wrote
it knows no turn of its own runs there, so its next turn there takes it over at once.

Why NATS KV rather than a PostgreSQL advisory lock:
- it works whatever the store is (the embedded SQLite or PostgreSQL), and every orchestrator
  already talks to NATS;
- expiry is built in: the bucket's TTL (the stream's max_age) drops a dead holder's key on
  the server's clock, with nobody to clean up and no clock of ours to trust;
- no connection is pinned: an advisory lock lives as long as the database session that took
  it, so each running turn would hold a pooled connection for its whole length, and a hung
  but connected holder would keep its lock for ever.

The TTL is the bucket's, not per key: nats-server 2.15 has per-message TTLs, but nats.py
2.16's `KeyValue.update` (the renewal) cannot set one, so a renewed key would never expire.
The bucket's TTL applies to every write, renewals included.

When NATS is not connected, turns go on with this process's claim only (warned once per
outage): NATS trouble degrades, it does not stop conversations (ARCHITECTURE.md), and with
one orchestrator that claim is the whole truth. With several, a NATS outage is when two
replicas could both run a turn in one conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from voicebus.bus import EventBus
from voicebus.nats_auth import LEASE_BUCKET as BUCKET

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# A NATS call of the lease path waits at most this long (a local round trip takes ~1 ms; a
# 3-node cluster a few): then the turn goes on with the local claim, as when NATS is down.
CALL_TIMEOUT_SECONDS = 1.0


def lease_key(conversation_id: str) -> str:
    """The KV key of a conversation (conversation ids are already valid keys; others are hashed)."""
    return conversation_id if _KEY.match(conversation_id) else hashlib.sha256(conversation_id.encode()).hexdigest()


@dataclass
class _Held:
    turn_id: str
    revision: int
    value: bytes
    renewer: asyncio.Task[None] | None = None
    ending: asyncio.Event = field(default_factory=asyncio.Event)


class TurnLeases:
    def __init__(self, bus: EventBus, seconds: float, holder: str, replicas: int = 1) -> None:
        self.bus, self.seconds, self.holder, self.replicas = bus, seconds, holder, replicas
        self._kv: KeyValue | None = None
        self._held: dict[str, _Held] = {}  # key -> this process's lease on it
        self._warned = False
        self._process = uuid.uuid4().hex  # in each value: which leases this very process wrote

    async def declare(self) -> None:
        """Create (or find) the bucket; run on every NATS connect (voicebus.bus.EventBus.on_connect)."""
        assert self.bus.nc is not None
        js = self.bus.nc.jetstream()
        config = KeyValueConfig(bucket=BUCKET, ttl=self.seconds, history=1, replicas=self.replicas,
                                description="orchestrator turn leases: one running turn per conversation")
        try:
            self._kv = await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            # It exists with another TTL (the setting changed): the newest start's setting wins.
            self._kv = await js.key_value(BUCKET)
            stream = await js.stream_info(f"KV_{BUCKET}")
            stream.config.max_age = self.seconds
            stream.config.duplicate_window = min(self.seconds, 120.0)
            await js.update_stream(stream.config)
            log.info("turn lease bucket's TTL changed", extra={"fields": {"seconds": self.seconds}})
        self._warned = False

    def _usable(self) -> KeyValue | None:
        if self._kv is not None and self.bus.connected:
            return self._kv
        self._warn("NATS is not connected")
        return None

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("turn leases unavailable (%s): turns are guarded by this orchestrator's own claim only", why)

    async def acquire(self, conversation_id: str, turn_id: str) -> bool:
        """True when the conversation is ours for this turn (or NATS cannot say); False when
        another orchestrator's turn holds it. Called only when no turn of this process holds
        the conversation (Conversations.claim checks that first)."""
        key = lease_key(conversation_id)
        if (kv := self._usable()) is None:
            return True
        value = json.dumps({"turn_id": turn_id, "holder": self.holder, "process": self._process}).encode()
        try:
            try:
                revision = await asyncio.wait_for(kv.create(key, value), CALL_TIMEOUT_SECONDS)
            except nats.js.errors.KeyWrongLastSequenceError:
                if (revision := await self._take_over_own(kv, key, value)) is None:
                    return False
        except (asyncio.TimeoutError, nats.errors.Error) as exc:
            self._warn(f"{exc.__class__.__name__}: {exc}")
            return True
        held = self._held[key] = _Held(turn_id, revision, value)
        held.renewer = asyncio.create_task(self._renew(kv, key, held))
        return True

    async def _take_over_own(self, kv: KeyValue, key: str, value: bytes) -> int | None:
        """The key holds a lease of this very process that was not deleted (NATS did not answer in
        time when its turn ended): no turn of ours runs there now, so it is stale and ours to
        take again at once rather than after the TTL. Another holder's is left alone (None)."""
        try:
            entry = await asyncio.wait_for(kv.get(key), CALL_TIMEOUT_SECONDS)
            writer = json.loads(entry.value or b"{}").get("process")
        except nats.js.errors.KeyNotFoundError:
            return None  # deleted since the create failed: the client's retry finds it free
        except (ValueError, AttributeError):
            return None  # not a lease we wrote
        if writer != self._process:
            return None
        try:
            return await asyncio.wait_for(kv.update(key, value, last=entry.revision), CALL_TIMEOUT_SECONDS)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None  # it expired and another turn took it meanwhile

    async def _renew(self, kv: KeyValue, key: str, held: _Held) -> None:
        """Renew every third of the lease until the turn ends. The end waits for a renewal under
        way instead of cancelling it: the server may apply a cancelled update all the same, and the
        delete (with the revision we last saw) would then miss and leave the lease for its TTL."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(held.ending.wait(), self.seconds / 3)
            if held.ending.is_set():
                return
            try:
                held.revision = await asyncio.wait_for(kv.update(key, held.value, last=held.revision),
                                                       CALL_TIMEOUT_SECONDS)
            except nats.js.errors.KeyWrongLastSequenceError:
                # Not renewed for a whole lease (NATS was away): another turn may hold it now.
                log.warning("turn lease lost while the turn runs", extra={"fields": {
                    "conversation_id": key, "turn_id": held.turn_id}})
                return
            except (asyncio.TimeoutError, nats.errors.Error) as exc:
                log.debug("turn lease renewal failed, retrying: %s", exc)

    async def release(self, conversation_id: str, turn_id: str) -> None:
        """Drop this turn's lease (only the revision it wrote: never another holder's)."""
        key = lease_key(conversation_id)
        held = self._held.get(key)
        if held is None or held.turn_id != turn_id:
            return
        del self._held[key]
        held.ending.set()
        if held.renewer is not None:
            await held.renewer  # within CALL_TIMEOUT_SECONDS: a renewal under way lands first
        if (kv := self._usable()) is None:
            return  # it expires by itself
        try:
            await asyncio.wait_for(kv.delete(key, last=held.revision), CALL_TIMEOUT_SECONDS)
        except nats.js.errors.BadRequestError as exc:  # 10071: wrong last sequence
            # Expired and taken by another turn meanwhile: theirs now, left alone.
            log.debug("turn lease already gone: %s", exc)
        except (asyncio.TimeoutError, nats.errors.Error) as exc:
            log.warning("turn lease not deleted (it expires within %g s): %s", self.seconds, exc)
