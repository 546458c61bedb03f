"""NATS for events and heartbeats, never on a turn's critical path.

`EventBus.publish` only enqueues: a background task sends when NATS is connected, so a
slow or absent NATS degrades events, not conversations. The connection is retried for
ever, and messages queued meanwhile (up to a bound) are sent after it comes back.

Every connection logs in (NATS refuses anonymous clients, see voicebus.nats_auth) with
this process's credentials, over TLS when configured, and heartbeats carry an HMAC
signature (`Voicebus-Signature`) when a heartbeat key is known, because a heartbeat
decides where the orchestrator sends the user's words and the bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client

from voicebus.config import CommonSettings
from voicebus.v1 import events_pb2

log = logging.getLogger(__name__)

TURN_STREAM = "VOICEBUS_TURNS"
TURN_SUBJECTS = "voicebus.turn.>"
HEARTBEAT_SUBJECTS = "voicebus.service.*.heartbeat"
# How long a publish is retried (while connected) before the event is dropped and counted.
PUBLISH_RETRY_SECONDS = 20.0
CLOSE_SECONDS = 5.0  # the longest close() waits for its tasks, and then for the drain


def heartbeat_subject(service: str) -> str:
    return f"voicebus.service.{service}.heartbeat"


def turn_subject(conversation_id: str, stage: str) -> str:
    return f"voicebus.turn.{conversation_id}.{stage}"


# --- who this process is on NATS ------------------------------------------------------------

SIGNATURE_HEADER = "Voicebus-Signature"
_SIGNATURE_PREFIX = "v1="
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


async def flush_sent(nc: Client, timeout: float = 5.0) -> None:
    """Return once the server has processed everything sent on `nc` so far (a SUB, a PUB).

    nats.py 2.16's `flush()` writes its PING straight to the socket, ahead of commands still in
    the client's pending buffer, so its PONG may come back before a SUB just made reaches the
    server, and a message published right after is lost (tests/test_security.py lost one in
    ~5 % of tries under load). Writing the buffer out first makes the PONG mean what it says."""
    await nc._flush_pending(force_flush=True)  # noqa: SLF001 - the public flush() skips this buffer
    await nc.flush(timeout=timeout)


def without_credentials(url: str) -> str:
    """The URL(s) with any `user:password@` removed, for log lines and messages."""
    def one(part: str) -> str:
        parts = urlsplit(part.strip())
        if parts.username is None and parts.password is None:
            return part.strip()
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return ",".join(one(u) for u in url.split(",") if u.strip())


def url_has_credentials(url: str) -> bool:
    return any(urlsplit(u.strip()).username for u in url.split(",") if u.strip())


def _credentials_file(settings: CommonSettings) -> dict[str, Any]:
    if not settings.nats_credentials_file:
        return {}
    try:
        data = json.loads(settings.nats_credentials_file.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read VOICEBUS_NATS_CREDENTIALS_FILE {settings.nats_credentials_file}: {exc}") \
            from None
    return data if isinstance(data, dict) else {}


def nats_login(settings: CommonSettings, url: str | None = None) -> tuple[str, str] | None:
    """(user, password) for nats.connect, or None when the URL carries them (or nothing does).

    Order: the URL's `user:password@`, then VOICEBUS_NATS_USER/_PASSWORD, then the
    credentials file."""
    if url_has_credentials(url or settings.nats_url):
        return None
    if settings.nats_user:
        return settings.nats_user, settings.nats_password.get_secret_value() if settings.nats_password else ""
    file = _credentials_file(settings)
    if file.get("user"):
        return str(file["user"]), str(file.get("password", ""))
    return None


def nats_user_name(settings: CommonSettings, url: str | None = None) -> str:
    if login := nats_login(settings, url):
        return login[0]
    urls = (url or settings.nats_url).split(",")
    return next((urlsplit(u.strip()).username or "" for u in urls if u.strip()), "")


def inbox_prefix(user: str) -> str:
    """Each user's replies (JetStream acks) arrive under its own prefix, so that NATS
    permissions can let a user read its own replies and nobody else's."""
    return f"_INBOX.{user}" if _SUBJECT_TOKEN.match(user or "") else "_INBOX"


def heartbeat_key(settings: CommonSettings) -> bytes | None:
    """The key that signs (services) and checks (orchestrator) heartbeats, or None.

    VOICEBUS_HEARTBEAT_KEY, else the credentials file's, else one derived from the bearer
    token (every process of a stack with a token already shares it)."""
    if settings.heartbeat_key and settings.heartbeat_key.get_secret_value():
        return settings.heartbeat_key.get_secret_value().encode()
    if key := _credentials_file(settings).get("heartbeat_key"):
        return str(key).encode()
    if token := settings.token():
        # Derived, not the token itself: a leaked signature key must not open the gRPC APIs.
        return hmac.new(token.encode(), b"voicebus heartbeat signing key v1", hashlib.sha256).digest()
    return None


def heartbeat_signature(key: bytes, subject: str, payload: bytes) -> str:
    """The header value: HMAC-SHA256 over the subject and the exact payload bytes (no
    re-serialisation, so any protobuf library's encoding verifies)."""
    mac = hmac.new(key, subject.encode() + b"\n" + payload, hashlib.sha256).hexdigest()
    return _SIGNATURE_PREFIX + mac


def signature_valid(key: bytes, subject: str, payload: bytes, headers: Mapping[str, str] | None) -> bool:
    value = (headers or {}).get(SIGNATURE_HEADER, "")
    return bool(value) and hmac.compare_digest(value.encode(), heartbeat_signature(key, subject, payload).encode())


def client_tls_context(settings: CommonSettings) -> ssl.SSLContext | None:
    """TLS for NATS clients when VOICEBUS_TLS_CA or _CERT is set (servers are checked
    against the CA; our certificate goes along for servers that require one)."""
    if not (settings.tls_ca or settings.tls_cert):
        return None
    context = ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)
    if settings.tls_cert and settings.tls_key:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


def connect_options(settings: CommonSettings, url: str | None = None) -> dict[str, Any]:
    """Keyword arguments for nats.connect: login, TLS and the inbox prefix of this process."""
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(nats_user_name(settings, url))}
    if login := nats_login(settings, url):
        options["user"], options["password"] = login
    if tls := client_tls_context(settings):
        options["tls"] = tls
    return options


@dataclass
class _Outgoing:
    subject: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)
    jetstream: bool = False


class EventBus:
    """`settings` gives the login, TLS and heartbeat key; None = this process's own
    `VOICEBUS_*` environment (what every service runs with)."""

    def __init__(self, url: str, name: str, max_queued: int = 1000, settings: CommonSettings | None = None) -> None:
        self.url = url
        self.name = name
        self.settings = settings if settings is not None else CommonSettings()
        self._heartbeat_key = heartbeat_key(self.settings)
        self.nc: Client | None = None
        self.dropped = 0
        self._queue: asyncio.Queue[_Outgoing] = asyncio.Queue(maxsize=max_queued)
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self._warned = False
        self._closing = False
        self._connect_hooks: list[Callable[[], Awaitable[None]]] = []

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._connect_loop()), asyncio.create_task(self._send_loop())]

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self.connected

    async def _connect_loop(self) -> None:
        delay = 0.2
        while self.nc is None:
            try:
                self.nc = await nats.connect(
                    [u.strip() for u in self.url.split(",") if u.strip()], name=self.name, allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=1, connect_timeout=2, error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected,
                    **connect_options(self.settings, self.url))
            except Exception as exc:  # noqa: BLE001 - any failure means "try again later"
                if not self._warned:
                    log.warning("NATS not reachable at %s (%s); events wait until it is",
                                without_credentials(self.url), exc)
                    self._warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        log.info("connected to NATS", extra={"fields": {"url": without_credentials(self.url)}})
        await self._run_connect_hooks()
        self._connected.set()

    def on_connect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` after the first connect and after every reconnect (e.g. to declare streams)."""
        self._connect_hooks.append(hook)

    async def _run_connect_hooks(self) -> None:
        for hook in self._connect_hooks:
            try:
                await hook()
            except Exception as exc:  # noqa: BLE001 - a hook failing must not stop the bus
                log.warning("NATS connect hook failed: %s", exc)

    async def subscribe(self, subject: str, cb: Callable[..., Awaitable[None]]) -> None:
        """Subscribe once connected (nats.py re-subscribes by itself after reconnects)."""
        await self._connected.wait()
        assert self.nc is not None
        await self.nc.subscribe(subject, cb=cb)

    async def _on_error(self, exc: Exception) -> None:
        # A permissions violation means this process's NATS user may not do what it tried:
        # a configuration error worth seeing, not a network hiccup.
        if "permissions violation" in str(exc).lower() or "authorization" in str(exc).lower():
            log.warning("NATS refused: %s", exc)
        else:
            log.debug("NATS error: %s", exc)

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if not self._closing:
            log.warning("NATS disconnected; events are queued until it is back")

    async def _on_reconnected(self) -> None:
        log.info("NATS reconnected")
        await self._run_connect_hooks()
        self._connected.set()

    def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None,
                jetstream: bool = False) -> None:
        """Queue a message; never blocks. When the queue is full the oldest is dropped."""
        item = _Outgoing(subject, payload, dict(headers or {}), jetstream)
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.dropped += 1

    async def _send_loop(self) -> None:
        while True:
            item = await self._queue.get()
            attempts, started = 0, time.monotonic()
            while True:
                await self._connected.wait()
                assert self.nc is not None
                try:
                    if item.jetstream:
                        await self.nc.jetstream().publish(item.subject, item.payload, headers=item.headers or None,
                                                          timeout=2)
                    else:
                        await self.nc.publish(item.subject, item.payload, headers=item.headers or None)
                    break
                except Exception as exc:  # noqa: BLE001 - retried, then given up on
                    attempts += 1
                    # A retry carries the same Nats-Msg-Id, so JetStream stores the event once. On a
                    # cluster a stream whose leader died takes a new leader's election (seconds) to
                    # accept writes again: keep trying for that long before giving up.
                    if attempts >= 5 and self.connected and time.monotonic() - started >= PUBLISH_RETRY_SECONDS:
                        self.dropped += 1
                        log.warning("dropping event for %s after %d failed publishes: %s", item.subject, attempts, exc)
                        break
                    await asyncio.sleep(0.5)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until queued messages are handed to NATS (for shutdown and tests)."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.connected and self.nc:
            with contextlib.suppress(Exception):
                await flush_sent(self.nc, max(0.1, deadline - time.monotonic()))

    async def send_heartbeat(self, *, service: str, instance_id: str, address: str, capabilities: list[str],
                             in_flight: int, load: float, draining: bool = False, ttl: float = 6.0) -> None:
        now = Timestamp()
        now.GetCurrentTime()
        status = events_pb2.SERVICE_STATUS_DRAINING if draining else events_pb2.SERVICE_STATUS_SERVING
        beat = events_pb2.ServiceHeartbeat(service=service, instance_id=instance_id, address=address,
                                           status=status, in_flight=in_flight, load=load, time=now,
                                           ttl_seconds=ttl, capabilities=capabilities)
        subject, payload = heartbeat_subject(service), beat.SerializeToString()
        headers = ({SIGNATURE_HEADER: heartbeat_signature(self._heartbeat_key, subject, payload)}
                   if self._heartbeat_key else None)
        if draining:
            # Sent directly so that it goes out before the process exits.
            if self.connected and self.nc:
                with contextlib.suppress(Exception):
                    await self.nc.publish(subject, payload, headers=headers)
                    await flush_sent(self.nc, 1)
            return
        self.publish(subject, payload, headers=headers)

    async def heartbeat_loop(self, *, service: str, instance_id: str, address: str, interval: float,
                             capabilities: list[str], load: Callable[[], tuple[int, float]]) -> None:
        while True:
            if self.connected:
                in_flight, current = load()
                await self.send_heartbeat(service=service, instance_id=instance_id, address=address,
                                          capabilities=capabilities, in_flight=in_flight, load=current,
                                          ttl=interval * 3)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stop sending and disconnect, within a bound: a publish stuck inside the NATS client
        (a send loop seen not to end after its cancel) must not hang the process's shutdown."""
        await self.flush(timeout=1.0)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            ended, stuck = await asyncio.wait(self._tasks, timeout=CLOSE_SECONDS)
            for task in ended:  # retrieved, so that a task's own failure is not reported at exit
                if not task.cancelled():
                    task.exception()
            if stuck:
                log.warning("NATS bus closed with %d task(s) that did not stop", len(stuck))
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), CLOSE_SECONDS)
