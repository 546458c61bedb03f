"""Security of the bus and the edges (issue 12, part 1), tried from the outside.

The hijack: a fake LLM instance announces itself on NATS so that the orchestrator sends it
the user's words and the bearer token. It must fail anonymously (NATS refuses the
connection), with another service's credentials (NATS refuses the publish), and with the
LLM's own credentials but no valid, fresh, plausible signed heartbeat (the orchestrator
ignores it). A last, correctly signed instance does get the call: the rig can see a hijack.
Also: per-role NATS permissions, the credentials files, TLS for gRPC and NATS with a CA made
here, /metrics on loopback behind the token, and secrets masked in every log line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect as ws_connect

from gateway_stack import start_gateway
from helpers import ROOT, NatsServer, ServiceProcess, free_port
from test_deploy import run_compose
from voicebus import nats_auth
from voicebus.bus import SIGNATURE_HEADER, EventBus, flush_sent, heartbeat_key, heartbeat_signature
from voicebus.config import CommonSettings
from voicebus.health import grpc_health
from voicebus.logs import RedactingFormatter
from voicebus.telemetry import SPANS_SUBJECT
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc, events_pb2, llm_pb2, llm_pb2_grpc

TOKEN = "tok-" + secrets.token_urlsafe(16)
LLM_SUBJECT = "voicebus.service.llm.heartbeat"
WAIT_SECONDS = 30.0  # waits end as soon as the awaited thing happens; this only bounds a failure


async def wait_until(predicate, what: str, timeout: float = WAIT_SECONDS):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


class Client:
    """A NATS connection that keeps the errors the server sent it (permission violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: nats.NATS | None = None

    async def connect(self, url: str, user: str = "") -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))
        options = {"inbox_prefix": f"_INBOX.{user}"} if user else {}
        self.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, connect_timeout=5, **options)
        return self

    async def refused(self, kind: str, subject: str) -> None:
        expected = f'permissions violation for {kind} to "{subject}"'.lower()  # nats.py lowercases it
        await wait_until(lambda: any(expected in e.lower() for e in self.errors),
                         f"NATS to refuse the {kind} to {subject} (errors: {self.errors})")

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


def heartbeat(address: str, *, load: float = 0.0, sent: float | None = None, service: str = "llm") -> bytes:
    beat = events_pb2.ServiceHeartbeat(service=service, instance_id=f"fake-{address}", address=address, load=load,
                                       status=events_pb2.SERVICE_STATUS_SERVING, ttl_seconds=30, in_flight=0)
    beat.time.FromNanoseconds(int((time.time() if sent is None else sent) * 1e9))
    return beat.SerializeToString()


def signed(key: bytes, payload: bytes, subject: str = LLM_SUBJECT) -> dict[str, str]:
    return {SIGNATURE_HEADER: heartbeat_signature(key, subject, payload)}


# --- credentials and permissions -----------------------------------------------------------

def test_credentials_are_made_once_private_and_completed(tmp_path):
    path = tmp_path / "data" / nats_auth.CREDENTIALS_FILE
    first = nats_auth.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(first.passwords) == set(nats_auth.ROLES) and len(set(first.passwords.values())) == len(nats_auth.ROLES)
    assert nats_auth.load_or_create(path) == first  # kept across restarts
    stored = json.loads(path.read_text())
    del stored["users"]["tts"]
    path.write_text(json.dumps(stored))
    path.chmod(0o644)
    completed = nats_auth.load_or_create(path)
    assert completed.passwords["stt"] == first.passwords["stt"] and completed.passwords["tts"] != first.passwords["tts"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_voicebus_up_gives_each_child_its_own_user(tmp_path):
    """What `voicebus up` writes and hands out (voicebus.stack uses exactly these two calls)."""
    settings = CommonSettings(data_dir=tmp_path, nats_url="nats://admin:leaked@127.0.0.1:4333")
    config, credentials = nats_auth.embedded_server(settings)
    assert config.stat().st_mode & 0o777 == 0o600
    parsed = json.loads(config.read_text().split("\n", 1)[1])
    assert parsed["listen"] == "127.0.0.1:4333" and parsed["jetstream"]["store_dir"] == str(tmp_path / "nats")
    assert len(parsed["authorization"]["users"]) == len(nats_auth.ROLES)
    checked = subprocess.run([str(Path(sys.executable).parent / "nats-server"), "-c", str(config), "-t"],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    env = nats_auth.child_env(credentials, settings, "stt")
    assert env == {"VOICEBUS_NATS_URL": "nats://127.0.0.1:4333", "VOICEBUS_NATS_USER": "voicebus-stt",
                   "VOICEBUS_NATS_PASSWORD": credentials.passwords["stt"],
                   "VOICEBUS_HEARTBEAT_KEY": credentials.heartbeat_key}
    # The gateway verifies orchestrator heartbeats (to find orchestrators) but may not publish one.
    gateway = nats_auth.child_env(credentials, settings, "gateway")
    assert gateway["VOICEBUS_NATS_USER"] == "voicebus-gateway"
    assert gateway["VOICEBUS_HEARTBEAT_KEY"] == credentials.heartbeat_key
    # With a token every process derives the same key from it; the generated one is not forced on them.
    with_token = CommonSettings(data_dir=tmp_path, auth_token=TOKEN)
    assert "VOICEBUS_HEARTBEAT_KEY" not in nats_auth.child_env(credentials, with_token, "stt")


async def test_anonymous_and_wrong_passwords_are_refused(nats_server):
    for url in (nats_server.anonymous_url, nats_server.anonymous_url.replace("://", "://voicebus-stt:guess@")):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=5)


PUBLISH = [  # (role, subject, allowed)
    ("stt", "voicebus.service.stt.heartbeat", True), ("stt", LLM_SUBJECT, False),
    ("stt", "voicebus.turn.c1.turn_completed", False), ("llm", LLM_SUBJECT, True),
    ("tts", "voicebus.service.orchestrator.heartbeat", False), ("gateway", "voicebus.service.stt.heartbeat", False),
    ("gateway", "voicebus.turn.c1.turn_completed", False), ("orchestrator", "voicebus.turn.c1.turn_completed", True),
    ("orchestrator", LLM_SUBJECT, False), ("tts", SPANS_SUBJECT, True),
]
SUBSCRIBE = [  # (role, subject, allowed)
    ("stt", "voicebus.turn.>", False), ("llm", "voicebus.service.*.heartbeat", False), ("tts", ">", False),
    ("stt", "_INBOX.>", False), ("gateway", "voicebus.service.*.heartbeat", False),
    ("gateway", "voicebus.turn.>", True), ("orchestrator", "voicebus.service.*.heartbeat", True),
    ("gateway", "voicebus.service.orchestrator.heartbeat", True),
]


async def test_each_role_publishes_and_reads_only_its_own_subjects(nats_server):
    listener = await Client().connect(nats_server.url)
    seen: list[tuple[str, bytes]] = []

    async def record(msg) -> None:  # noqa: ANN001
        seen.append((msg.subject, msg.data))
    await listener.nc.subscribe("voicebus.>", cb=record)
    await flush_sent(listener.nc)
    try:
        for role, subject, allowed in PUBLISH:
            client = await Client().connect(nats_server.url_for(role), nats_auth.user_name(role))
            payload, marker = secrets.token_bytes(8), secrets.token_bytes(8)
            await client.nc.publish(subject, payload)
            await client.nc.publish(SPANS_SUBJECT, marker)  # same connection: delivered after `payload`
            await flush_sent(client.nc)
            await wait_until(lambda: (SPANS_SUBJECT, marker) in seen, f"{role}'s marker")
            assert ((subject, payload) in seen) == allowed, (role, subject)
            if not allowed:
                await client.refused("publish", subject)
            await client.close()
        for role, subject, allowed in SUBSCRIBE:
            client = await Client().connect(nats_server.url_for(role), nats_auth.user_name(role))
            subscription = await client.nc.subscribe(subject)
            await flush_sent(client.nc)
            if allowed:
                concrete = subject.replace("*", "stt").replace(">", "c1.turn_completed")
                await listener.nc.publish(concrete, b"hello")
                await flush_sent(listener.nc)
                assert (await subscription.next_msg(timeout=WAIT_SECONDS)).data == b"hello"
            else:
                await client.refused("subscription", subject)
            await client.close()
        # The stored turns (JetStream) are out of reach of every service but the orchestrator.
        stt = await Client().connect(nats_server.url_for("stt"), "voicebus-stt")
        with pytest.raises(Exception):  # noqa: B017, PT011 - the request is refused, so it times out
            await stt.nc.jetstream().stream_info("VOICEBUS_TURNS")
        await stt.refused("publish", "$JS.API.STREAM.INFO.VOICEBUS_TURNS")
        await stt.close()
    finally:
        await listener.close()


# --- the hijack ------------------------------------------------------------------------------

class RecordingLLM(llm_pb2_grpc.LanguageModelServicer):
    """A would-be LLM instance that records what reaches it: metadata (the token) and words."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls: list[tuple[dict[str, str], llm_pb2.GenerateRequest]] = []

    async def Generate(self, request, context):  # noqa: ANN001, N802 - the gRPC method's name
        self.calls.append((dict(context.invocation_metadata()), request))
        yield llm_pb2.GenerateResponse(request_id=request.request_id, delta=llm_pb2.TextDelta(text=self.answer))
        yield llm_pb2.GenerateResponse(request_id=request.request_id, done=llm_pb2.GenerationDone(
            finish_reason=llm_pb2.FINISH_REASON_STOP, provider="fake", model="fake"))


async def serve_fake(answer: str) -> tuple[grpc.aio.Server, RecordingLLM, str]:
    fake, server = RecordingLLM(answer), grpc.aio.server()
    llm_pb2_grpc.add_LanguageModelServicer_to_server(fake, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    return server, fake, address


def log_entries(proc: ServiceProcess) -> list[dict]:
    return [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]


def logged(proc: ServiceProcess, message: str, address: str) -> bool:
    return any(e.get("message", "").startswith(message) and e.get("address") == address for e in log_entries(proc))


@pytest.fixture(scope="module")
def guarded(nats_server, tmp_path_factory):
    """An orchestrator with a token whose configured STT, LLM and TTS do not answer, so any
    LLM call it makes goes to an instance it learned from a heartbeat; /metrics on."""
    grpc_port, metrics_port = sorted((free_port(), free_port()))
    address = f"127.0.0.1:{grpc_port}"
    env = {**nats_server.env_for("orchestrator"), "VOICEBUS_AUTH_TOKEN": TOKEN, "GROQ_API_KEY": "",
           "VOICEBUS_DATA_DIR": str(tmp_path_factory.mktemp("guarded")), "VOICEBUS_ORCHESTRATOR_ADDR": address,
           **{f"VOICEBUS_{s}_ADDR": f"127.0.0.1:{free_port()}" for s in ("STT", "LLM", "TTS")},
           "VOICEBUS_METRICS_PORT_OFFSET": str(metrics_port - grpc_port)}
    proc = ServiceProcess("orchestrator", address, env, name="orchestrator-guarded").wait_healthy()
    yield {"proc": proc, "address": address, "metrics_port": metrics_port}
    proc.stop()


async def ask(address: str, text: str) -> assistant_pb2.ProcessTurnResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await assistant_pb2_grpc.AssistantStub(channel).ProcessTurn(
            assistant_pb2.ProcessTurnRequest(text=text), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=60)


def draining(address: str) -> bytes:
    """A heartbeat for an instance that is shutting down: it joins the registry (its own log
    line) but is never called. Sent after other heartbeats on the same connection, its line
    says the orchestrator has handled them all (NATS keeps one connection's order)."""
    beat = events_pb2.ServiceHeartbeat.FromString(heartbeat(address))
    beat.status = events_pb2.SERVICE_STATUS_DRAINING
    return beat.SerializeToString()


async def handled(llm: Client, proc: ServiceProcess, key: bytes, repeat: bool = False) -> None:
    """Wait until the orchestrator has handled what `llm` published so far."""
    sentinel = f"127.0.0.1:{free_port()}"
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        payload = draining(sentinel)
        await llm.nc.publish(LLM_SUBJECT, payload, headers=signed(key, payload))
        await flush_sent(llm.nc)
        if await asyncio.to_thread(lambda: logged(proc, "instance joined", sentinel)) or not repeat:
            break
        assert time.monotonic() < deadline, "the orchestrator never took a heartbeat"
        await asyncio.sleep(0.2)
    await wait_until(lambda: logged(proc, "instance joined", sentinel), "the orchestrator to take the sentinel")


async def test_a_fake_instance_cannot_hijack_the_next_turn(nats_server, guarded):
    key = nats_server.credentials.heartbeat_key.encode()
    assert heartbeat_key(CommonSettings(heartbeat_key=nats_server.credentials.heartbeat_key)) == key
    proc, servers, fakes = guarded["proc"], [], {}
    for case in ("anonymous", "other_role", "unsigned", "bad_signature", "stale", "negative_load", "nan_load",
                 "control"):
        server, fake, address = await serve_fake(f"Hijacked by {case}.")
        servers.append(server)
        fakes[case] = (fake, address)
    llm = await Client().connect(nats_server.url_for("llm"), "voicebus-llm")
    try:
        await handled(llm, proc, key, repeat=True)  # the orchestrator follows heartbeats now

        # (a) No credentials: NATS refuses the connection (if it did not, a signed heartbeat would go out).
        anonymous_refusal = ""
        try:
            anonymous = await nats.connect(nats_server.anonymous_url, allow_reconnect=False, connect_timeout=5)
        except nats.errors.Error as exc:
            anonymous_refusal = str(exc)
        else:
            payload = heartbeat(fakes["anonymous"][1])
            await anonymous.publish(LLM_SUBJECT, payload, headers=signed(key, payload))
            await flush_sent(anonymous)
            await anonymous.close()
        # (b) Another service's credentials: the publish is refused, even correctly signed.
        stt = await Client().connect(nats_server.url_for("stt"), "voicebus-stt")
        payload = heartbeat(fakes["other_role"][1])
        await stt.nc.publish(LLM_SUBJECT, payload, headers=signed(key, payload))
        await flush_sent(stt.nc)
        # (c) The LLM's own credentials, but no valid signature, or a stale or absurd heartbeat.
        forged = {
            "unsigned": (heartbeat(fakes["unsigned"][1]), None),
            "bad_signature": (heartbeat(fakes["bad_signature"][1]), b"not-the-key"),
            "stale": (heartbeat(fakes["stale"][1], sent=time.time() - 600), key),
            "negative_load": (heartbeat(fakes["negative_load"][1], load=-1.0), key),
            "nan_load": (heartbeat(fakes["nan_load"][1], load=math.nan), key),
        }
        for payload, signing_key in forged.values():
            await llm.nc.publish(LLM_SUBJECT, payload, headers=signed(signing_key, payload) if signing_key else None)
        await handled(llm, proc, key)

        reply = await ask(guarded["address"], "My card number is 4111 1111.")
        assert {case: fake.calls for case, (fake, _) in fakes.items()} == {case: [] for case in fakes}
        assert reply.turn.outcome == assistant_pb2.TURN_OUTCOME_FAILED  # no LLM it trusts answered
        assert "Authorization Violation" in anonymous_refusal
        await stt.refused("publish", LLM_SUBJECT)
        await stt.close()
        reasons = {e["address"]: e["reason"] for e in log_entries(proc) if e.get("message", "").startswith(
            "heartbeat ignored")}
        expected = {"unsigned": "unsigned", "bad_signature": "bad signature", "stale": "stale (",
                    "negative_load": "load -1", "nan_load": "load nan"}
        assert {case: reasons.get(fakes[case][1], "")[:len(start)] for case, start in expected.items()} == expected

        # The control: a correctly signed, fresh heartbeat is believed, so the test can see a hijack.
        payload = heartbeat(fakes["control"][1])
        await llm.nc.publish(LLM_SUBJECT, payload, headers=signed(key, payload))
        await wait_until(lambda: logged(proc, "instance joined", fakes["control"][1]), "the control to join")
        reply = await ask(guarded["address"], "What is the capital of France?")
        assert reply.turn.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED, reply.turn
        assert reply.turn.assistant_text == "Hijacked by control."
        (metadata, request), = fakes["control"][0].calls
        assert metadata["authorization"] == f"Bearer {TOKEN}"
        assert request.messages[-1].content == "What is the capital of France?"
        assert all(not fake.calls for case, (fake, _) in fakes.items() if case != "control")
        # A replay of that very heartbeat is no longer news.
        await llm.nc.publish(LLM_SUBJECT, payload, headers=signed(key, payload))
        await wait_until(lambda: any(e.get("reason") == "replayed" for e in log_entries(proc)), "the replay ignored")
    finally:
        await llm.close()
        for server in servers:
            await server.stop(None)


async def test_the_orchestrator_keeps_its_turn_stream_with_its_own_permissions(nats_server, guarded):
    """Its user may declare VOICEBUS_TURNS and publish turn events into it (the turns above)."""
    admin = await nats.connect(nats_server.url)
    try:
        info = await wait_until_async(lambda: admin.jetstream().stream_info("VOICEBUS_TURNS"))
        assert info.config.subjects == ["voicebus.turn.>"]
    finally:
        await admin.close()


async def wait_until_async(call, timeout: float = WAIT_SECONDS):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except Exception:  # noqa: BLE001 - not there yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_service_metrics_are_on_loopback_behind_the_token(guarded):
    url = f"http://127.0.0.1:{guarded['metrics_port']}/metrics"
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    reply = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert reply.status_code == 200 and "voicebus_rpc_in_flight" in reply.text
    # Another loopback address reaches any socket bound to 0.0.0.0, not one bound to 127.0.0.1.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.2", guarded["metrics_port"])) != 0
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        with socket.create_connection(("127.0.0.2", s.getsockname()[1]), timeout=5):
            pass  # the check above can fail: a wildcard bind is reachable there


# --- the registry's checks, one by one --------------------------------------------------------

def new_registry(**settings: object):  # noqa: ANN201
    from voicebus.registry import ServiceRegistry

    return ServiceRegistry(CommonSettings(llm_addr="127.0.0.1:1", **settings), retry_seconds=10.0)


def test_registry_believes_only_fresh_signed_plausible_heartbeats():
    registry = new_registry(auth_token=TOKEN)
    key = heartbeat_key(registry.settings)
    assert key and TOKEN.encode() not in key  # derived from the token, not the token itself
    now = time.time()
    first, newer = heartbeat("127.0.0.1:2001", sent=now - 1), heartbeat("127.0.0.1:2001", sent=now)
    assert registry.receive(LLM_SUBJECT, first, signed(key, first)) is None
    assert registry.receive(LLM_SUBJECT, first, signed(key, first)) == "replayed"
    assert registry.receive(LLM_SUBJECT, newer, signed(key, newer)) is None
    assert registry.receive(LLM_SUBJECT, first, signed(key, first)) == "replayed"  # older than the last
    future = heartbeat("127.0.0.1:2002", sent=now + 120)
    assert registry.receive(LLM_SUBJECT, future, signed(key, future)).startswith("stale")
    on_stt = heartbeat("127.0.0.1:2003")
    stt_subject = "voicebus.service.stt.heartbeat"
    assert "announced on" in registry.receive(stt_subject, on_stt, signed(key, on_stt, stt_subject))
    huge = heartbeat("127.0.0.1:2004", load=1e9)
    assert registry.receive(LLM_SUBJECT, huge, signed(key, huge)).startswith("load")
    assert registry.receive(LLM_SUBJECT, b"\xff\x00junk", signed(key, b"\xff\x00junk")) == "malformed"
    # A forged "draining" for the configured instance changes nothing; a signed one does.
    draining = events_pb2.ServiceHeartbeat(service="llm", instance_id="real", address="127.0.0.1:1",
                                           status=events_pb2.SERVICE_STATUS_DRAINING)
    draining.time.GetCurrentTime()
    payload = draining.SerializeToString()
    assert registry.receive(LLM_SUBJECT, payload, None) == "unsigned"
    assert "127.0.0.1:1" in registry.candidates("llm")
    assert registry.receive(LLM_SUBJECT, payload, signed(key, payload)) is None
    assert registry.candidates("llm") == ["127.0.0.1:2001"]
    # A TTL beyond a minute is cut to one.
    long_lived = events_pb2.ServiceHeartbeat.FromString(heartbeat("127.0.0.1:2005"))
    long_lived.ttl_seconds = 1e9
    payload = long_lived.SerializeToString()
    assert registry.receive(LLM_SUBJECT, payload, signed(key, payload)) is None
    assert registry.instances["llm"]["127.0.0.1:2005"].expires_at <= time.monotonic() + 60


def test_without_a_key_heartbeats_are_still_checked_for_sense():
    registry = new_registry()
    assert registry.receive(LLM_SUBJECT, heartbeat("127.0.0.1:2001"), None) is None
    assert registry.receive(LLM_SUBJECT, heartbeat("127.0.0.1:2002", load=-1), None).startswith("load")
    assert registry.receive(LLM_SUBJECT, heartbeat("no-port"), None) == "address is not host:port"
    assert registry.candidates("llm")[0] in ("127.0.0.1:1", "127.0.0.1:2001")
    assert "127.0.0.1:2002" not in registry.candidates("llm")


# --- TLS with a CA made here -----------------------------------------------------------------

def openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, another CA nobody trusts, and a server and a client certificate from the first
    (both name 127.0.0.1 and localhost)."""
    folder = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        openssl(folder, "req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                "-subj", f"/CN=voicebus test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (folder / "leaf.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                     "extendedKeyUsage=serverAuth,clientAuth\n")
    for leaf in ("server", "client"):
        openssl(folder, "req", *ec, "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr", "-subj", f"/CN={leaf}")
        openssl(folder, "x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{leaf}.pem", "-days", "2", "-extfile", "leaf.ext")
    return {p.name: p for p in folder.iterdir()}


def health(address: str, credentials: grpc.ChannelCredentials | None = None) -> str:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@pytest.mark.parametrize("client_auth", [False, True], ids=["tls", "mutual-tls"])
def test_grpc_tls_with_a_ca_made_here(pki, tmp_path, client_auth):
    address = f"127.0.0.1:{free_port()}"
    env = {"VOICEBUS_ORCHESTRATOR_ADDR": address, "VOICEBUS_DATA_DIR": str(tmp_path), "GROQ_API_KEY": "",
           "VOICEBUS_NATS_URL": f"nats://127.0.0.1:{free_port()}", "VOICEBUS_METRICS_PORT_OFFSET": "0",
           "VOICEBUS_TLS_CERT": str(pki["server.pem"]), "VOICEBUS_TLS_KEY": str(pki["server.key"]),
           "VOICEBUS_TLS_CA": str(pki["ca.pem"]), "VOICEBUS_TLS_CLIENT_AUTH": str(client_auth).lower()}
    ca = pki["ca.pem"].read_bytes()
    with_client_cert = grpc.ssl_channel_credentials(ca, pki["client.key"].read_bytes(), pki["client.pem"].read_bytes())
    proc = ServiceProcess("orchestrator", address, env, name=f"orchestrator-tls-{client_auth}")
    try:
        deadline = time.monotonic() + 120
        while health(address, with_client_cert) != "SERVING":
            assert proc.proc.poll() is None and time.monotonic() < deadline, proc.logs()[-2000:]
            time.sleep(0.2)
        assert health(address) == "UNAVAILABLE"  # plaintext is not served
        assert health(address, grpc.ssl_channel_credentials(pki["other-ca.pem"].read_bytes())) == "UNAVAILABLE"
        assert health(address, grpc.ssl_channel_credentials(ca)) == ("UNAVAILABLE" if client_auth else "SERVING")
        # Voicebus's own clients (voicebus.grpc_client.open_channel) with the same settings.
        settings = CommonSettings(tls_ca=pki["ca.pem"], tls_cert=pki["client.pem"], tls_key=pki["client.key"])
        assert asyncio.run(grpc_health(address, settings, timeout=5)) == "SERVING"
    finally:
        proc.stop()


async def test_nats_tls_with_a_ca_made_here(pki):
    server = NatsServer(tls=nats_auth.ServerTls(pki["server.pem"], pki["server.key"], pki["ca.pem"]))
    settings = CommonSettings(nats_url=server.url, tls_ca=pki["ca.pem"])
    bus = EventBus(server.url, name="tls-test", settings=settings)
    try:
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):  # our CA is not the system's
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=5)
        reader = await nats.connect(server.url, tls=ssl.create_default_context(cafile=str(pki["ca.pem"])))
        subscription = await reader.subscribe(SPANS_SUBJECT)
        await flush_sent(reader)
        await bus.start()
        assert await bus.wait_connected(WAIT_SECONDS)
        bus.publish(SPANS_SUBJECT, b"over tls")
        assert (await subscription.next_msg(timeout=WAIT_SECONDS)).data == b"over tls"
        await reader.close()
    finally:
        await bus.close()
        server.stop()


# --- containers: each service gets its own credentials ----------------------------------------

async def test_compose_gives_each_service_only_its_own_nats_credentials(tmp_path):
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["nats-credentials"]["command"] == ["python", "-m", "voicebus.nats_auth", "--out", "/data"]
    assert services["nats"]["depends_on"]["nats-credentials"]["condition"] == "service_completed_successfully"
    command = services["nats"]["command"]
    config_path = Path(command[command.index("--config") + 1])
    assert config_path == Path("/etc/nats/nats-single.conf")
    # the config's relative include finds the credentials volume next to it
    assert [v["target"] for v in services["nats"]["volumes"] if v["source"] == "nats-credentials"] == [
        str(config_path.parent / "credentials")]
    for role in ("stt", "llm", "tts", "orchestrator", "gateway"):
        mounts = [v for v in services[role]["volumes"] if v["source"] == "nats-credentials"]
        assert [(m["target"], m.get("read_only"), m.get("volume", {}).get("subpath")) for m in mounts] == [
            ("/credentials", True, role)], role
        assert services[role]["environment"]["VOICEBUS_NATS_CREDENTIALS_FILE"] == "/credentials/nats.json"

    # What the one-shot container runs, run here, into what the nats container mounts at
    # /etc/nats/credentials; then NATS with the shipped config, and a service that has nothing
    # but its own file.
    etc = tmp_path / "etc-nats"
    credentials = etc / "credentials"
    subprocess.run([sys.executable, "-m", "voicebus.nats_auth", "--out", str(credentials)], check=True,
                   capture_output=True)
    for role in nats_auth.ROLES:
        assert (credentials / role / "nats.json").stat().st_mode & 0o777 == 0o600
    shipped = (ROOT / "deploy" / "compose" / config_path.name).read_text()
    (etc / config_path.name).write_text(shipped.replace("store_dir: /data", f"store_dir: {tmp_path / 'js'}"))
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "nats-server"), "-c",
                               str(etc / config_path.name), "-a", "127.0.0.1", "-p", str(port), "-m", str(free_port())],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "NATS_SERVER_NAME": "nats"})
    url = f"nats://127.0.0.1:{port}"
    settings = CommonSettings(nats_url=url, nats_credentials_file=credentials / "stt" / "nats.json")
    bus = EventBus(url, name="stt-in-a-container", settings=settings)
    admin = json.loads((credentials / "admin" / "nats.json").read_text())
    try:
        reader = await wait_until_async(lambda: nats.connect(
            url.replace("://", f"://{admin['user']}:{admin['password']}@"), allow_reconnect=False))
        subscription = await reader.subscribe("voicebus.service.stt.heartbeat")
        await flush_sent(reader)
        await bus.start()
        assert await bus.wait_connected(WAIT_SECONDS)
        await bus.send_heartbeat(service="stt", instance_id="stt-1", address="stt:50051", capabilities=[],
                                 in_flight=0, load=0.0)
        msg = await subscription.next_msg(timeout=WAIT_SECONDS)
        key = json.loads((credentials / "orchestrator" / "nats.json").read_text())["heartbeat_key"].encode()
        assert msg.headers[SIGNATURE_HEADER] == heartbeat_signature(key, msg.subject, msg.data)
        await reader.close()
    finally:
        await bus.close()
        server.terminate()
        server.wait(10)


# --- secrets never reach a log line ---------------------------------------------------------------

def test_secrets_of_any_length_are_masked_in_every_form():
    short, odd = "k7", "p@ss w/rd+é"
    formatter = RedactingFormatter(logging.Formatter("%(message)s"), [short, odd, TOKEN])

    def line(message: str) -> str:
        return formatter.format(logging.LogRecord("test", logging.INFO, "", 0, message, (), None))

    forms = [short, odd, TOKEN, quote(odd, safe=""), quote(odd, safe="").lower(), quote(odd), json.dumps(odd)[1:-1],
             base64.b64encode(odd.encode()).decode(), base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("=")]
    for form in forms:
        assert line(f"before {form} after") == "before *** after", form
    for prefix in ("user:", "ab:", "x"):  # base64 of a longer string that contains the token, at each alignment
        encoded = base64.b64encode(f"{prefix}{TOKEN}".encode()).decode()
        masked = line(f"Authorization: Basic {encoded}")
        assert "***" in masked and encoded not in masked
    # Credentials recognised by their place, whoever's they are.
    assert line("GET /ws?token=someone-elses&x=1") == "GET /ws?token=***&x=1"
    assert line("authorization: Bearer not-ours") == "authorization: Bearer ***"
    assert line("connecting to nats://voicebus-stt:hunter2@nats:4222") == "connecting to nats://voicebus-stt:***@nats:4222"
    assert line("an ordinary line with k and 7") == "an ordinary line with k and 7"


async def test_the_gateway_log_never_shows_a_token(tmp_path):
    token, wrong = "p@ss w/rd", "someone-elses-token"  # short, and percent-encoded in a URL
    env = {"VOICEBUS_AUTH_TOKEN": token, "VOICEBUS_TRACE_VIEW": "false", "VOICEBUS_DATA_DIR": str(tmp_path),
           "VOICEBUS_ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}", "VOICEBUS_LOG_LEVEL": "DEBUG",
           "VOICEBUS_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    proc, base = await asyncio.to_thread(start_gateway, env, "gateway-secrets")
    try:
        ws = base.replace("http://", "ws://") + "/ws"
        async with ws_connect(f"{ws}?token={quote(token, safe='')}") as socket_:
            await socket_.send(json.dumps({"type": "ping"}))
            assert json.loads(await socket_.recv())["type"] == "pong"
        async with ws_connect(f"{ws}?token={wrong}") as socket_:
            assert json.loads(await socket_.recv())["type"] == "error"
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"{base}/api/conversations", headers={"Authorization": f"Bearer {wrong}"})
            assert reply.status_code == 401
    finally:
        await asyncio.to_thread(proc.stop)
    logs = proc.log_path.read_text(errors="replace")
    assert "WebSocket /ws?token=***" in logs  # uvicorn's line is there, masked
    for leaked in (token, quote(token, safe=""), quote(token), wrong):
        assert leaked not in logs, leaked
