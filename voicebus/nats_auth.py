"""NATS credentials and permissions: one user per role, each allowed only what it needs.

A heartbeat decides where the orchestrator sends the user's words and the bearer token,
and turn events carry those words, so NATS never takes anonymous clients. Every role has
its own user with a random password; nats-server enforces per-user permissions:

| role | may publish | may subscribe |
| --- | --- | --- |
| stt, llm, tts | its own `voicebus.service.<role>.heartbeat`, spans | its own inbox |
| orchestrator | its heartbeat, spans, `voicebus.turn.>`, the JetStream API of `VOICEBUS_TURNS`, the turn lease bucket | heartbeats, its own inbox |
| gateway | spans | spans, `voicebus.turn.>`, orchestrator heartbeats, its own inbox |
| admin | anything (for operators: `nats` CLI, tests) | anything |

Where the credentials come from:
- `voicebus up` (and the tests' NatsServer): `load_or_create(<data_dir>/nats-credentials.json)`
  makes them on first start (mode 0600) and `write_server_config` the nats-server config;
  each child gets its own user in VOICEBUS_NATS_USER / VOICEBUS_NATS_PASSWORD (`role_env`).
- Containers: `python -m voicebus.nats_auth --out DIR` writes the same two files plus
  `DIR/<role>/nats.json` per role, read through VOICEBUS_NATS_CREDENTIALS_FILE.
The file also holds the heartbeat signing key (see voicebus.bus.heartbeat_key).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from voicebus.bus import (
    HEARTBEAT_SUBJECTS, TURN_STREAM, TURN_SUBJECTS, heartbeat_subject, inbox_prefix, without_credentials,
)
from voicebus.config import CommonSettings
from voicebus.telemetry import SPANS_SUBJECT

CREDENTIALS_FILE = "nats-credentials.json"
SERVER_CONFIG_FILE = "nats-server.conf"
HEARTBEAT_ROLES = ("stt", "llm", "tts", "orchestrator")
ROLES = (*HEARTBEAT_ROLES, "gateway", "admin")
# The JetStream API calls the orchestrator makes to declare its stream (voicebus.bus users
# publish to the stream's subjects directly; the acks come back to their inboxes).
_STREAM_API = tuple(f"$JS.API.STREAM.{op}.{TURN_STREAM}" for op in ("INFO", "CREATE", "UPDATE"))
# The turn lease bucket (orchestrator/lease.py): declared, read and written by orchestrators only.
LEASE_BUCKET = "voicebus_turn_leases"
_LEASE_API = (f"$KV.{LEASE_BUCKET}.>", f"$JS.API.DIRECT.GET.KV_{LEASE_BUCKET}.>",
              f"$JS.API.STREAM.MSG.GET.KV_{LEASE_BUCKET}",
              *(f"$JS.API.STREAM.{op}.KV_{LEASE_BUCKET}" for op in ("INFO", "CREATE", "UPDATE")))
# Roles that check heartbeats, and so need the signing key: the orchestrator (services'), the
# gateway (orchestrators').
VERIFY_ROLES = ("orchestrator", "gateway")


def user_name(role: str) -> str:
    return f"voicebus-{role}"


@dataclass(frozen=True)
class StackCredentials:
    passwords: dict[str, str]
    heartbeat_key: str

    def login(self, role: str) -> tuple[str, str]:
        return user_name(role), self.passwords[role]

    def url(self, url: str, role: str) -> str:
        """`url` (one or more, comma-separated) with this role's `user:password@` in each."""
        user, password = self.login(role)
        parts = []
        for one in (u.strip() for u in url.split(",") if u.strip()):
            scheme, _, rest = one.rpartition("://")
            parts.append(f"{scheme or 'nats'}://{user}:{password}@{rest.rsplit('@', 1)[-1]}")
        return ",".join(parts)


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    ca: Path | None = None
    verify_clients: bool = False


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only, never briefly readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is reduced by the umask, never widened; be exact anyway
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def load_or_create(path: Path) -> StackCredentials:
    """The stack's credentials from `path`; made (random, 0600) on first use, and completed
    when a role is missing (an older file), so passwords survive restarts."""
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise SystemExit(f"{path} is not valid JSON ({exc}); remove it to make new NATS credentials") from None
    users = data.get("users") if isinstance(data.get("users"), dict) else {}
    passwords = {role: str(users[role]["password"]) for role in ROLES
                 if isinstance(users.get(role), dict) and users[role].get("password")}
    key = str(data.get("heartbeat_key") or "")
    if set(passwords) != set(ROLES) or not key:
        passwords = {role: passwords.get(role) or secrets.token_urlsafe(24) for role in ROLES}
        key = key or secrets.token_urlsafe(32)
        body = {"users": {role: {"user": user_name(role), "password": passwords[role]} for role in ROLES},
                "heartbeat_key": key}
        write_private(path, json.dumps(body, indent=2) + "\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return StackCredentials(passwords, key)


def permissions(role: str) -> dict[str, Any] | None:
    """nats-server permissions of a role; None = everything (admin)."""
    if role == "admin":
        return None
    publish = [SPANS_SUBJECT]
    subscribe = [inbox_prefix(user_name(role)) + ".>"]
    if role in HEARTBEAT_ROLES:
        publish.append(heartbeat_subject(role))
    if role == "orchestrator":
        publish += [TURN_SUBJECTS, *_STREAM_API, *_LEASE_API]
        subscribe.append(HEARTBEAT_SUBJECTS)
    if role == "gateway":
        subscribe += [SPANS_SUBJECT, TURN_SUBJECTS, heartbeat_subject("orchestrator")]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def server_config(credentials: StackCredentials, *, listen: str | None = None, store_dir: Path | None = None,
                  tls: ServerTls | None = None) -> str:
    """A nats-server configuration (JSON is valid NATS config syntax) that refuses anonymous
    clients and gives each role its permissions; `listen`, JetStream's `store_dir` (synced to
    disk on every write) and `tls` when given (else the command line's)."""
    users = []
    for role in ROLES:
        user, password = credentials.login(role)
        entry: dict[str, Any] = {"user": user, "password": password}
        if (allowed := permissions(role)) is not None:
            entry["permissions"] = allowed
        users.append(entry)
    config: dict[str, Any] = {"authorization": {"users": users}}
    if listen:
        config["listen"] = listen
    if store_dir is not None:
        # fsync every write before the ack: with JetStream's default (every 2 minutes) a power
        # loss can drop events already acknowledged; a turn's few events a second are cheap to sync.
        config["jetstream"] = {"store_dir": str(store_dir), "sync_interval": "always"}
    if tls is not None:
        block: dict[str, Any] = {"cert_file": str(tls.cert), "key_file": str(tls.key)}
        if tls.ca:
            block["ca_file"] = str(tls.ca)
        if tls.verify_clients:
            block["verify"] = True
        config["tls"] = block
    return "# Written by voicebus.nats_auth; regenerated on every start.\n" + json.dumps(config, indent=2) + "\n"


def role_env(credentials: StackCredentials, role: str) -> dict[str, str]:
    """The environment a child process of `voicebus up` gets for its role."""
    user, password = credentials.login(role)
    env = {"VOICEBUS_NATS_USER": user, "VOICEBUS_NATS_PASSWORD": password}
    if role in HEARTBEAT_ROLES or role in VERIFY_ROLES:
        env["VOICEBUS_HEARTBEAT_KEY"] = credentials.heartbeat_key
    return env


def nats_listen_address(settings: CommonSettings) -> tuple[str, int]:
    """(host, port) of the first server in VOICEBUS_NATS_URL, without its credentials."""
    first = urlsplit(settings.nats_url.split(",")[0].strip())
    return first.hostname or "127.0.0.1", first.port or 4222


def embedded_server(settings: CommonSettings) -> tuple[Path, StackCredentials]:
    """For `voicebus up`: the stack's credentials (made on first start) and a fresh nats-server
    config listening where VOICEBUS_NATS_URL points, JetStream in `<data_dir>/nats`, and TLS
    with VOICEBUS_TLS_CERT/_KEY."""
    data_dir = settings.data_dir.resolve()
    credentials = load_or_create(data_dir / CREDENTIALS_FILE)
    tls = None
    if settings.tls_cert and settings.tls_key:
        tls = ServerTls(settings.tls_cert.resolve(), settings.tls_key.resolve(),
                        settings.tls_ca.resolve() if settings.tls_ca else None, settings.tls_client_auth)
    host, port = nats_listen_address(settings)
    path = data_dir / SERVER_CONFIG_FILE
    write_private(path, server_config(credentials, listen=f"{host}:{port}", store_dir=data_dir / "nats", tls=tls))
    return path, credentials


def child_env(credentials: StackCredentials, settings: CommonSettings, role: str) -> dict[str, str]:
    """What a child of `voicebus up` adds to its environment: its own NATS user (the URL loses
    any user of its own, which would win over it) and the heartbeat key, unless one is set."""
    env = {**role_env(credentials, role), "VOICEBUS_NATS_URL": without_credentials(settings.nats_url)}
    if settings.heartbeat_key or settings.token():
        env.pop("VOICEBUS_HEARTBEAT_KEY", None)  # the configured key (or the token's) stays the stack's
    return env


def write_role_files(credentials: StackCredentials, folder: Path) -> list[Path]:
    """`folder/<role>/nats.json` for each role (VOICEBUS_NATS_CREDENTIALS_FILE in a container
    that mounts only its own role's folder)."""
    written = []
    for role in ROLES:
        user, password = credentials.login(role)
        body: dict[str, str] = {"user": user, "password": password}
        if role in HEARTBEAT_ROLES or role in VERIFY_ROLES or role == "admin":
            body["heartbeat_key"] = credentials.heartbeat_key
        path = folder / role / "nats.json"
        write_private(path, json.dumps(body, indent=2) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voicebus.nats_auth",
        description="Make (once) the stack's NATS credentials and write the nats-server config and one "
                    "credentials file per role, e.g. for docker compose. Prints no secret.")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into (kept across runs)")
    parser.add_argument("--listen", help="host:port for nats-server's config; default: its command line's")
    args = parser.parse_args(argv)
    credentials = load_or_create(args.out / CREDENTIALS_FILE)
    write_private(args.out / SERVER_CONFIG_FILE, server_config(credentials, listen=args.listen))
    files = write_role_files(credentials, args.out)
    print(f"NATS credentials in {args.out / CREDENTIALS_FILE}; server config {args.out / SERVER_CONFIG_FILE}; "
          f"{len(files)} role files ({', '.join(ROLES)})", file=sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
