"""Tracing, metrics and logs through the real stack, read from the outside.

NATS, STT, LLM (SmolLM2-135M behind a Groq provider whose endpoint refuses connections,
so every turn takes the provider fallback), TTS, the orchestrator and the gateway run as
real processes. Every process forwards its spans over NATS to the gateway, so
`/debug/traces/{id}` shows whether each one exported its spans into the right trace.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from gateway_stack import speech_wav, start_gateway
from helpers import ROOT, ServiceProcess, free_port

TOKEN = "tracing-test-token-" + secrets.token_hex(8)
GROQ_KEY = "gsk_tracing_test_" + secrets.token_hex(12)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = "What is the capital of France?"
SERVICES = {"voicebus-gateway", "voicebus-orchestrator", "voicebus-stt", "voicebus-llm", "voicebus-tts"}
TURN_END = ("turn_completed", "turn_failed", "turn_interrupted")


def port_above(port: int) -> int:
    while (candidate := free_port()) <= port:
        pass
    return candidate


@pytest.fixture(scope="module")
def stack(nats_server):
    ports = {name: free_port() for name in ("stt", "llm", "tts", "orchestrator")}
    env = {
        "VOICEBUS_NATS_URL": nats_server.url, "VOICEBUS_DATA_DIR": tempfile.mkdtemp(prefix="voicebus-tracing-"),
        "VOICEBUS_AUTH_TOKEN": TOKEN, "VOICEBUS_HEARTBEAT_SECONDS": "0.5",
        # A Groq key (it must never reach a log) for an endpoint that refuses connections:
        # each answer falls back to the local model, a fallback the trace must show.
        "GROQ_API_KEY": GROQ_KEY, "VOICEBUS_GROQ_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "VOICEBUS_LLM_PROVIDERS": "groq,local", "VOICEBUS_LLM_LOCAL_MODEL": "smollm2-135m",
        "VOICEBUS_LLM_MAX_TOKENS": "40",
        **{f"VOICEBUS_{name.upper()}_ADDR": f"127.0.0.1:{port}" for name, port in ports.items()},
    }
    metrics = {name: port_above(port) for name, port in ports.items()}
    procs: dict[str, ServiceProcess] = {}
    try:
        for name in ("stt", "llm", "tts", "orchestrator"):
            module = "orchestrator" if name == "orchestrator" else f"{name}_service"
            procs[name] = ServiceProcess(module, env[f"VOICEBUS_{name.upper()}_ADDR"], {
                **env, "VOICEBUS_METRICS_PORT_OFFSET": str(metrics[name] - ports[name])}, name=f"tracing-{name}")
        for proc in procs.values():
            proc.wait_healthy()
        procs["gateway"], base = start_gateway(env, name="tracing-gateway")
        yield {"base": base, "procs": procs, "metrics": {n: f"http://127.0.0.1:{p}/metrics" for n, p in metrics.items()}}
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> bytes:
    return speech_wav(QUESTION, tmp_path_factory.mktemp("speech") / "q.wav", tail_silence=0.5).read_bytes()


def client_traceparent() -> tuple[str, str, str]:
    """(traceparent, trace id, span id) as a browser or any OTel client would send them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def flatten(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for span in spans:
        out.append(span)
        out.extend(flatten(span["children"]))
    return out


def fetch_trace(base: str, trace_id: str, until: Any, timeout: float = 20.0) -> dict[str, Any]:
    """The trace from the gateway once `until(spans)` holds (spans arrive ~0.5 s after they end)."""
    deadline = time.monotonic() + timeout
    tree: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reply = httpx.get(f"{base}/debug/traces/{trace_id}", headers=AUTH, timeout=5)
        if reply.status_code == 200:
            tree = reply.json()
            if until(flatten(tree["spans"])):
                return tree
        time.sleep(0.3)
    names = sorted(f"{s['service']}:{s['name']}" for s in flatten(tree.get("spans", [])))
    raise AssertionError(f"trace {trace_id} incomplete after {timeout} s; spans so far: {names}")


def named(spans: list[dict[str, Any]], name: str, service: str | None = None) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name and (service is None or s["service"] == service)]


def one(spans: list[dict[str, Any]], name: str, service: str | None = None) -> dict[str, Any]:
    found = named(spans, name, service)
    assert len(found) == 1, f"{len(found)} spans named {name!r} ({service}): {[s['service'] for s in found]}"
    return found[0]


def assert_one_tree(tree: dict[str, Any], client_span: str) -> dict[str, dict[str, Any]]:
    """One root (a child of the client's span), and every other span's parent in the trace."""
    spans = flatten(tree["spans"])
    by_id = {s["span_id"]: s for s in spans}
    assert len(tree["spans"]) == 1, f"several roots: {[(s['service'], s['name']) for s in tree['spans']]}"
    root = tree["spans"][0]
    assert root["parent_span_id"] == client_span and root["remote_parent"] is True
    assert all(s["parent_span_id"] in by_id for s in spans if s is not root)
    return by_id


def has_all(*names: str) -> Any:
    """These spans are in, and no span waits for its parent (each process forwards on its own clock)."""
    def complete(spans: list[dict[str, Any]]) -> bool:
        ids = {s["span_id"] for s in spans}
        return set(names) <= {s["name"] for s in spans} and sum(s["parent_span_id"] not in ids for s in spans) == 1
    return complete


def parent_of(by_id: dict[str, dict[str, Any]], span: dict[str, Any]) -> dict[str, Any]:
    return by_id[span["parent_span_id"]]


def log_lines(proc: ServiceProcess) -> list[dict[str, Any]]:
    lines = []
    for line in proc.logs().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return lines


# ---- one REST turn: one trace through every process -----------------------------------------------
def test_a_spoken_turn_is_one_trace_across_every_process(stack, question_wav):
    traceparent, trace_id, client_span = client_traceparent()
    reply = httpx.post(f"{stack['base']}/api/process_audio", content=question_wav, timeout=120, headers={
        **AUTH, "Content-Type": "audio/wav", "traceparent": traceparent, "X-Request-ID": "trace-req-1"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["trace_id"] == trace_id and reply.headers["x-trace-id"] == trace_id  # the client's trace, continued
    stack["rest_turn"] = body

    tree = fetch_trace(stack["base"], trace_id, has_all(
        "POST /api/process_audio", "turn", "stt.transcribe", "llm.generate", "tts.sentence",
        "sqlite UPDATE turns", "receive turn.turn_completed"))
    by_id = assert_one_tree(tree, client_span)
    spans = list(by_id.values())
    assert set(tree["services"]) == SERVICES
    assert tree["spans"][0]["name"] == "POST /api/process_audio" and tree["spans"][0]["service"] == "voicebus-gateway"

    # gRPC client and server spans on each hop, parent to child.
    hops = {"/voicebus.v1.Assistant/ProcessTurn": ("voicebus-gateway", "voicebus-orchestrator"),
            "/voicebus.v1.SpeechToText/Transcribe": ("voicebus-orchestrator", "voicebus-stt"),
            "/voicebus.v1.LanguageModel/Generate": ("voicebus-orchestrator", "voicebus-llm"),
            "/voicebus.v1.TextToSpeech/StreamingSynthesize": ("voicebus-orchestrator", "voicebus-tts")}
    for method, (caller, callee) in hops.items():
        client = one(spans, method, caller)
        server = one(spans, method, callee)
        assert (client["kind"], server["kind"]) == ("client", "server")
        assert server["parent_span_id"] == client["span_id"], method
    turn = one(spans, "turn", "voicebus-orchestrator")
    assert parent_of(by_id, turn)["name"] == "/voicebus.v1.Assistant/ProcessTurn"
    assert turn["attributes"]["voicebus.turn_id"] == body["turn_id"]
    assert turn["attributes"]["voicebus.outcome"] == "completed"
    for method in ("/voicebus.v1.LanguageModel/Generate", "/voicebus.v1.TextToSpeech/StreamingSynthesize"):
        assert parent_of(by_id, one(spans, method, "voicebus-orchestrator")) is turn

    stt = one(spans, "stt.transcribe", "voicebus-stt")
    assert stt["attributes"]["stt.audio_seconds"] > 1.0 and stt["attributes"]["stt.model"]
    assert stt["attributes"]["stt.language"] == "en"

    llm = one(spans, "llm.generate", "voicebus-llm")
    assert llm["attributes"]["llm.provider"] == "local" and llm["attributes"]["llm.model"]
    assert llm["attributes"]["llm.completion_tokens"] > 0 and llm["attributes"]["llm.prompt_tokens"] > 0
    assert [e["name"] for e in llm["events"]] == ["fallback", "first_token"]
    assert llm["events"][0]["attributes"]["llm.provider"] == "groq"
    attempts = {s["attributes"]["llm.provider"]: s for s in named(spans, "llm.first_token")}
    assert attempts["groq"]["status"] == "error" and attempts["local"]["status"] != "error"

    sentences = named(spans, "tts.sentence", "voicebus-tts")
    assert sentences and all(s["attributes"]["tts.audio_seconds"] > 0 and s["attributes"]["tts.engine"]
                             and s["attributes"]["tts.voice"] for s in sentences)

    for write in ("sqlite INSERT turns", "sqlite UPDATE turns"):
        assert parent_of(by_id, one(spans, write, "voicebus-orchestrator")) is turn
    # NATS: the orchestrator's publish, the gateway's consume as its child.
    received = one(spans, "receive turn.turn_completed", "voicebus-gateway")
    published = parent_of(by_id, received)
    assert (published["name"], published["service"], published["kind"], received["kind"]) == (
        "publish turn.turn_completed", "voicebus-orchestrator", "producer", "consumer")
    assert parent_of(by_id, published) is turn

    listed = httpx.get(f"{stack['base']}/debug/traces", headers=AUTH, timeout=5).json()["traces"]
    summary = next(t for t in listed if t["trace_id"] == trace_id)
    assert summary["root"] == "POST /api/process_audio" and set(summary["services"]) == SERVICES
    assert summary["turn"]["outcome"] == "completed" and summary["turn"]["turn_id"] == body["turn_id"]

    # Every process logged about this turn with its trace id; ids ride along.
    for name, proc in stack["procs"].items():
        assert any(line.get("trace_id") == trace_id for line in log_lines(proc)), f"{name}: no log line with the trace id"
    finished = [line for line in log_lines(stack["procs"]["orchestrator"]) if line["message"] == "turn finished"
                and line.get("trace_id") == trace_id]
    assert finished and finished[0]["request_id"] == "trace-req-1"
    assert finished[0]["conversation_id"] == body["conversation_id"]


# ---- WebSocket: one trace per turn, not per stream ------------------------------------------------
async def next_turn(ws: Any) -> list[dict[str, Any]]:
    events = []
    while True:
        message = await asyncio.wait_for(ws.recv(), 120)
        if isinstance(message, bytes):
            continue
        events.append(json.loads(message))
        if events[-1]["type"] in TURN_END or events[-1]["type"] == "error":
            return events


async def test_each_websocket_turn_is_its_own_trace(stack, question_wav):
    ws_url = stack["base"].replace("http://", "ws://") + "/ws"
    stream_parent, stream_trace, _ = client_traceparent()
    typed, typed_trace, typed_span = client_traceparent()
    spoken, spoken_trace, spoken_span = client_traceparent()
    cut, cut_trace, cut_span = client_traceparent()
    async with connect(ws_url, additional_headers=AUTH, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "start", "format": "wav", "traceparent": stream_parent}))
        assert json.loads(await ws.recv())["type"] == "conversation_opened"
        await ws.send(json.dumps({"type": "text", "text": "Say hello.", "traceparent": typed}))
        events = await next_turn(ws)
        assert events[-1]["type"] == "turn_completed", events[-1]
        assert {e.get("trace_id") for e in events if e.get("turn_id")} == {typed_trace}

        await ws.send(json.dumps({"type": "audio_start", "traceparent": spoken}))
        for i in range(0, len(question_wav), 8000):
            await ws.send(question_wav[i:i + 8000])
        await ws.send(json.dumps({"type": "end_of_audio", "traceparent": spoken}))
        events = await next_turn(ws)
        assert events[-1]["type"] == "turn_completed", events[-1]
        assert {e.get("trace_id") for e in events if e.get("turn_id")} == {spoken_trace}

        # A barge-in: interrupted as soon as the answer starts.
        await ws.send(json.dumps({"type": "text", "text": "Count from one to thirty in words.", "traceparent": cut}))
        while True:
            message = await asyncio.wait_for(ws.recv(), 60)
            if isinstance(message, str) and json.loads(message)["type"] == "response_delta":
                break
        await ws.send(json.dumps({"type": "interrupt"}))
        events = await next_turn(ws)
        assert events[-1]["type"] == "turn_interrupted" and events[-1]["trace_id"] == cut_trace

    # The typed turn: the gateway's WebSocket-turn span, then the orchestrator's turn.
    tree = await asyncio.to_thread(fetch_trace, stack["base"], typed_trace, has_all(
        "ws turn", "turn", "llm.generate", "tts.sentence", "receive turn.turn_completed"))
    by_id = assert_one_tree(tree, typed_span)
    root = tree["spans"][0]
    assert (root["name"], root["service"]) == ("ws turn", "voicebus-gateway")
    assert root["attributes"]["voicebus.outcome"] == "completed"
    assert "first_audio_sent" in [e["name"] for e in root["events"]]
    turn = one(list(by_id.values()), "turn")
    assert turn["parent_span_id"] == root["span_id"]
    assert not named(list(by_id.values()), "/voicebus.v1.Assistant/Converse")  # the stream is not the turn
    # The stream's own trace stays out of the list unless asked for.
    roots = lambda **params: [t["root"] for t in httpx.get(  # noqa: E731
        f"{stack['base']}/debug/traces", params=params, headers=AUTH, timeout=5).json()["traces"]]
    assert "/voicebus.v1.Assistant/Converse" not in roots() and "ws turn" in roots()
    # The stream's span ends when the socket closes, and reaches the trace store a moment later.
    deadline = time.monotonic() + 30
    while "/voicebus.v1.Assistant/Converse" not in roots(streams="true"):
        assert time.monotonic() < deadline, roots(streams="true")
        await asyncio.sleep(0.2)
    assert {"voicebus-gateway", "voicebus-orchestrator", "voicebus-llm", "voicebus-tts"} <= set(tree["services"])

    # The spoken turn: the recording's "listen" span holds the STT stream and the turn.
    tree = await asyncio.to_thread(fetch_trace, stack["base"], spoken_trace, has_all(
        "ws turn", "listen", "stt.final", "turn", "llm.generate", "tts.sentence", "receive turn.turn_completed"))
    by_id = assert_one_tree(tree, spoken_span)
    spans = list(by_id.values())
    assert set(tree["services"]) == SERVICES
    listen = one(spans, "listen", "voicebus-orchestrator")
    assert listen["parent_span_id"] == tree["spans"][0]["span_id"]
    assert {"speech_started", "end_of_audio", "final"} <= {e["name"] for e in listen["events"]}
    stream = one(spans, "/voicebus.v1.SpeechToText/StreamingTranscribe", "voicebus-orchestrator")
    assert stream["parent_span_id"] == listen["span_id"]
    final = one(spans, "stt.final", "voicebus-stt")
    assert parent_of(by_id, final)["name"] == "/voicebus.v1.SpeechToText/StreamingTranscribe"
    assert final["attributes"]["stt.audio_seconds"] > 1.0 and final["attributes"]["stt.model"]
    assert one(spans, "turn")["parent_span_id"] == listen["span_id"]

    # The barge-in is an event of the interrupted turn's span.
    tree = await asyncio.to_thread(fetch_trace, stack["base"], cut_trace, has_all(
        "ws turn", "turn", "receive turn.turn_interrupted"))
    by_id = assert_one_tree(tree, cut_span)
    turn = one(list(by_id.values()), "turn")
    assert "barge-in" in [e["name"] for e in turn["events"]]
    assert turn["attributes"]["voicebus.outcome"] == "interrupted"
    assert tree["spans"][0]["attributes"]["voicebus.outcome"] == "interrupted"


# ---- metrics ------------------------------------------------------------------------------------
def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, headers=AUTH, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_change_after_a_turn(stack):
    urls = {**stack["metrics"], "gateway": f"{stack['base']}/metrics"}
    before = {name: scrape(url) for name, url in urls.items()}
    reply = httpx.post(f"{stack['base']}/api/chat", headers=AUTH, json={"text": "Name a colour."}, timeout=120)
    assert reply.status_code == 200 and reply.json()["outcome"] == "completed", reply.text
    after = {name: scrape(url) for name, url in urls.items()}

    def grew(service: str, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        assert key in after[service], f"{service} has no {key}"
        return after[service][key] - before[service].get(key, 0.0)

    assert grew("orchestrator", "voicebus_turns_total", outcome="completed") == 1
    for stage in ("llm_first_token", "tts_first_chunk", "first_audio", "turn"):
        assert grew("orchestrator", "voicebus_stage_seconds_count", stage=stage) == 1, stage
    assert ("voicebus_active_streams", ()) in after["orchestrator"]
    assert grew("gateway", "voicebus_gateway_turns_total", route="chat", outcome="completed") == 1
    assert grew("gateway", "voicebus_gateway_http_request_seconds_count", method="POST", route="/api/chat",
                status="200") == 1
    assert grew("llm", "voicebus_llm_first_token_seconds_count", provider="local") == 1
    assert grew("llm", "voicebus_fallbacks_total", stage="llm", kind="provider") == 1  # Groq refused
    assert grew("tts", "voicebus_tts_first_chunk_seconds_count", engine=reply.json()["providers"]["tts_engine"]) == 1
    assert ("voicebus_queue_depth", (("queue", "tts_synthesis"),)) in after["tts"]
    assert after["stt"][("voicebus_queue_depth", (("queue", "stt_inference"),))] == 0
    assert after["stt"][("voicebus_stt_seconds_count", (("kind", "file"),))] >= 1  # the spoken REST turn


# ---- the view: protected, HTML, CLI -----------------------------------------------------------------
def test_trace_view_is_protected_and_readable(stack):
    base, trace_id = stack["base"], stack["rest_turn"]["trace_id"]
    assert httpx.get(f"{base}/debug/traces", timeout=5).status_code == 401
    assert httpx.get(f"{base}/debug/traces/{trace_id}", timeout=5).status_code == 401
    page = httpx.get(f"{base}/debug/traces/{trace_id}", headers={**AUTH, "Accept": "text/html"}, timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert trace_id in page.text and "tts.sentence" in page.text and "voicebus-stt" in page.text
    listing = httpx.get(f"{base}/debug/traces", headers={**AUTH, "Accept": "text/html"}, timeout=5)
    assert f"/debug/traces/{trace_id}" in listing.text
    missing = httpx.get(f"{base}/debug/traces/{'0' * 32}", headers=AUTH, timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "trace_not_found"
    assert httpx.get(f"{base}/debug/traces/nope", headers=AUTH, timeout=5).status_code == 422


def test_voicebus_trace_prints_the_tree(stack):
    trace_id = stack["rest_turn"]["trace_id"]
    env = {**os.environ, "VOICEBUS_AUTH_TOKEN": TOKEN}
    tree = subprocess.run([sys.executable, "-m", "voicebus.cli", "trace", trace_id, "--gateway", stack["base"]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert tree.returncode == 0, tree.stdout + tree.stderr
    lines = tree.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}")
    root = next(line for line in lines if "POST /api/process_audio" in line)
    llm = next(line for line in lines if "llm.generate" in line)
    assert " llm " in llm and "█" in llm
    assert llm.index("llm.generate") > root.index("POST /api/process_audio") + 4  # indented: deeper in the tree
    listing = subprocess.run([sys.executable, "-m", "voicebus.cli", "trace", "--gateway", stack["base"]],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0 and trace_id in listing.stdout
    refused = subprocess.run([sys.executable, "-m", "voicebus.cli", "trace", "--gateway", stack["base"]],
                             cwd=ROOT, env={**os.environ, "VOICEBUS_AUTH_TOKEN": ""}, capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode == 1 and "401" in refused.stdout and "Traceback" not in refused.stderr


def test_trace_view_can_be_turned_off():
    from fastapi.testclient import TestClient

    from web_gateway.app import create_app
    from web_gateway.settings import GatewaySettings

    settings = GatewaySettings(trace_view=False, orchestrator_addr=f"127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as client:
        reply = client.get("/debug/traces")
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "trace_view_off"


# ---- logs: no secrets, no audio ---------------------------------------------------------------------
def test_logs_carry_ids_but_no_secrets_or_audio(stack, question_wav):
    encoded = base64.b64encode(question_wav).decode()
    audio_piece = encoded[len(encoded) // 2:len(encoded) // 2 + 48]
    for name, proc in stack["procs"].items():
        text = proc.logs()
        assert TOKEN not in text, f"{name} logged the auth token"
        assert GROQ_KEY not in text and GROQ_KEY[-12:] not in text, f"{name} logged the Groq key"
        assert audio_piece not in text, f"{name} logged audio"
        assert not re.search(r"[A-Za-z0-9+/]{400,}", text), f"{name} logged a long base64 blob"
        # An event added to a span already ended is lost, and OTel says so in a warning.
        assert "on an ended span" not in text, f"{name}: {[l for l in text.splitlines() if 'ended span' in l][:3]}"
    gateway_lines = log_lines(stack["procs"]["gateway"])
    assert any(line.get("request_id") == "trace-req-1" and line.get("trace_id") == stack["rest_turn"]["trace_id"]
               for line in gateway_lines)


def test_a_stream_the_client_left_logs_no_context_error_but_other_detach_errors_stay(capsys):
    """grpc.aio leaves a left stream's generator to the garbage collector, whose close makes
    OpenTelemetry log "Failed to detach context" with a traceback: benign, so not an ERROR."""
    from voicebus.logs import setup_logging
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging("test")
    otel = logging.getLogger("opentelemetry.context")
    try:
        for cause in (GeneratorExit, KeyError):
            try:
                try:
                    raise cause
                except BaseException:  # noqa: BLE001 - the shape of OpenTelemetry's failed detach
                    raise ValueError("<Token> was created in a different Context")  # noqa: B904
            except ValueError:
                otel.exception("Failed to detach context")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        otel.filters.clear()
        root.handlers[:], root.level = handlers, level
    assert [(line["level"], "KeyError" in line.get("exception", "")) for line in lines] == [("ERROR", True)]

