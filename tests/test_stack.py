"""The whole stack as a user starts it: `voicebus up` on free ports, with a token."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from helpers import ROOT, VoicebusUp
from voicebus.v1 import (assistant_pb2, assistant_pb2_grpc, llm_pb2, llm_pb2_grpc, stt_pb2, stt_pb2_grpc,
                         tts_pb2, tts_pb2_grpc)

TOKEN = "test-token-123"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    up = VoicebusUp("stack", tmp_path_factory.mktemp("data"), {"VOICEBUS_AUTH_TOKEN": TOKEN})
    yield {"proc": up.proc, "ports": up.ports, "env": up.env, "log": up.log_path}
    up.stop(60)


SERVICES = {
    "stt": "voicebus.v1.SpeechToText",
    "llm": "voicebus.v1.LanguageModel",
    "tts": "voicebus.v1.TextToSpeech",
    "orchestrator": "voicebus.v1.Assistant",
}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_health_and_reflection(stack, service):
    address = f"127.0.0.1:{stack['ports'][service]}"
    with grpc.insecure_channel(address) as channel:
        # Health needs no token (load balancers, container healthchecks).
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        named = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICES[service]), timeout=5)
        assert named.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 metadata=AUTH, timeout=5))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {SERVICES[service], "grpc.health.v1.Health"} <= names


def _calls(channel):
    """One cheap call per service."""
    return {
        "stt": lambda md: stt_pb2_grpc.SpeechToTextStub(channel).Transcribe(
            stt_pb2.TranscribeRequest(audio=b""), metadata=md, timeout=10),
        "llm": lambda md: llm_pb2_grpc.LanguageModelStub(channel).ListModels(
            llm_pb2.ListModelsRequest(), metadata=md, timeout=10),
        "tts": lambda md: tts_pb2_grpc.TextToSpeechStub(channel).ListVoices(
            tts_pb2.ListVoicesRequest(), metadata=md, timeout=10),
        "orchestrator": lambda md: assistant_pb2_grpc.AssistantStub(channel).ListConversations(
            assistant_pb2.ListConversationsRequest(), metadata=md, timeout=10),
    }


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_token_required_on_every_grpc_service(stack, service):
    with grpc.insecure_channel(f"127.0.0.1:{stack['ports'][service]}") as channel:
        call = _calls(channel)[service]
        for metadata in (None, (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as err:
                call(metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # With the token the call reaches the service (whatever it then answers).
        try:
            call(AUTH)
        except grpc.RpcError as exc:
            assert exc.code() != grpc.StatusCode.UNAUTHENTICATED


def test_gateway_health_and_readiness(stack):
    base = f"http://127.0.0.1:{stack['ports']['gateway']}"
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    ready = httpx.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert {s["status"] for s in ready.json()["services"].values()} == {"SERVING"}


def test_status_command_reports_every_service(stack):
    out = subprocess.run([sys.executable, "-m", "voicebus.cli", "status"], cwd=ROOT, env=stack["env"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("nats", "stt", "llm", "tts", "orchestrator", "gateway"):
        assert any(line.split()[:1] == [name] and line.rstrip().endswith("SERVING")
                   for line in out.stdout.splitlines()), out.stdout


def test_stop_leaves_nothing_running(stack):
    """Last in this module: SIGTERM stops every child and frees every port."""
    proc = stack["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0
    log = stack["log"].read_text(errors="replace")
    assert "voicebus: stopped" in log
    import socket

    for name, port in stack["ports"].items():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listening on {port}"
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    leftovers = [line for line in out.splitlines()
                 if str(stack["ports"]["nats"]) in line or stack["env"]["VOICEBUS_DATA_DIR"] in line]
    assert not leftovers, leftovers


def test_contracts_lint_and_stubs_match():
    npx = "npx"
    lint = subprocess.run([npx, "--no-install", "buf", "lint"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    drift = subprocess.run(["bash", "scripts/gen_protos.sh", "--check"], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHON": sys.executable})
    assert drift.returncode == 0, drift.stdout + drift.stderr


def test_readme_lists_every_setting():
    """The README's configuration table is `voicebus config` (scripts/update_readme_config.py)."""
    table = subprocess.run([sys.executable, "-m", "voicebus.cli", "config"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    readme = (ROOT / "README.md").read_text()
    missing = [line for line in table.splitlines() if line not in readme]
    assert not missing, "README config table is stale; run scripts/update_readme_config.py:\n" + "\n".join(missing)
