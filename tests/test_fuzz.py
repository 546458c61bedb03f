"""Fuzzing the public edges (issue 12): seeded hostile input over REST, the WebSocket and
gRPC (every service, raw bytes included) against the real stack of tests/gateway_stack.py.

The bar: no 5xx, no dropped connection, no unclean gRPC status, and every service alive
and answering afterwards. Each test collects all failures of its run, with the seed and
case number that reproduce them, before it asserts.

Budget: `VOICEBUS_FUZZ_CASES` cases per surface (default: REST 400, WebSocket 300, gRPC 300
per service; the file takes about two minutes with the stack's start), seed
`VOICEBUS_FUZZ_SEED` (default 12).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import fuzz_inputs
from gateway_stack import AUTH, TOKEN, shared_stack
from voicebus.v1 import assistant_pb2, llm_pb2, stt_pb2, tts_pb2

SEED = int(os.environ.get("VOICEBUS_FUZZ_SEED", "12"))
OVERRIDE = int(os.environ.get("VOICEBUS_FUZZ_CASES", "0"))
REST_CASES, WS_CASES, GRPC_CASES = (OVERRIDE or 400), (OVERRIDE or 300), (OVERRIDE or 300)
DEADLINE = 120.0  # generous: only a hang exceeds it
METADATA = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def stack(nats_server, request):
    return shared_stack(nats_server.url, request.config)


def assert_stack_alive(stack) -> None:
    """Every process running, serving health, and a real turn answered end to end."""
    for name, service in stack.procs.items():
        assert service.proc.poll() is None, f"{name} died:\n{service.logs()[-3000:]}"
    for name in ("stt", "llm", "tts", "orchestrator"):
        with grpc.insecure_channel(stack.env[f"VOICEBUS_{name.upper()}_ADDR"]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30,
                                                               metadata=METADATA)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    with httpx.Client(base_url=stack.base, headers=AUTH, timeout=DEADLINE) as client:
        assert client.get("/readyz").status_code == 200
        turn = client.post("/api/chat", json={"text": "Say hello.", "synthesize_audio": False})
        assert turn.status_code == 200 and turn.json()["outcome"] == "completed", turn.text


def gateway_bugs(stack) -> int:
    """Unhandled exceptions the gateway logged (each one was a 500)."""
    return stack.procs["gateway"].logs().count("unhandled error in the gateway")


# ---- REST -----------------------------------------------------------------------------------
def test_rest_fuzz_never_5xx_nor_a_dropped_connection(stack):
    rng, failures = random.Random(SEED), []
    bugs_before = gateway_bugs(stack)
    with httpx.Client(base_url=stack.base, timeout=DEADLINE) as client:
        for number in range(REST_CASES):
            case = fuzz_inputs.http_case(rng)
            try:
                reply = client.request(case.method, case.path, params=case.params, headers={**AUTH, **case.headers},
                                       content=case.content, files=case.files, data=case.data)
            except httpx.TransportError as exc:  # the server dropped the connection
                failures.append((number, case.describe(), f"connection lost: {exc!r}"))
                continue
            if reply.status_code >= 500:
                failures.append((number, case.describe(), f"{reply.status_code} {reply.text[:300]}"))
            elif reply.status_code >= 400 and not reply.json().get("error", {}).get("message"):
                failures.append((number, case.describe(), f"an error without words: {reply.text[:300]}"))
    assert not failures, f"seed {SEED}: {len(failures)} of {REST_CASES} cases failed:\n" + "\n".join(
        map(str, failures[:20]))
    assert gateway_bugs(stack) == bugs_before
    assert_stack_alive(stack)


# ---- WebSocket ------------------------------------------------------------------------------
async def _fuzz_one_socket(stack, rng: random.Random, cases: int, failures: list, first: int) -> None:
    events: list[dict] = []
    pong = asyncio.Event()

    async def read(ws) -> None:
        async for message in ws:
            if isinstance(message, str):
                event = json.loads(message)
                events.append(event)
                if event.get("type") == "pong":
                    pong.set()

    async with connect(stack.ws_url, additional_headers=AUTH, max_size=2**24, open_timeout=30) as ws:
        reader = asyncio.create_task(read(ws))
        sent: list[str] = []
        try:
            for number in range(first, first + cases):
                frame = fuzz_inputs.ws_message(rng)
                sent.append(f"#{number}: {frame[:100]!r}")
                await ws.send(frame)
                await asyncio.sleep(0.01)
            pong.clear()
            await ws.send(json.dumps({"type": "ping"}))
            await asyncio.wait_for(pong.wait(), DEADLINE)  # answered: the socket lived through all of it
        except (ConnectionClosed, asyncio.TimeoutError) as exc:
            failures.append((sent[-3:], f"socket lost or silent: {exc!r}"))
        finally:
            reader.cancel()
    for event in events:
        if event.get("type") == "error" and event.get("status", 0) >= 500:
            failures.append((sent[-1:], f"5xx event: {event}"))


async def test_ws_fuzz_never_5xx_nor_a_closed_socket(stack):
    rng, failures = random.Random(SEED + 1), []
    per_socket = 40
    for first in range(0, WS_CASES, per_socket):
        await _fuzz_one_socket(stack, rng, min(per_socket, WS_CASES - first), failures, first)
    assert not failures, f"seed {SEED + 1}: {len(failures)} failures:\n" + "\n".join(map(str, failures[:20]))
    await asyncio.to_thread(assert_stack_alive, stack)


# ---- gRPC, every service, raw bytes -----------------------------------------------------------
@dataclass(frozen=True)
class Method:
    path: str
    request: type[Message]
    streaming_in: bool
    streaming_out: bool


SERVICES: dict[str, list[Method]] = {
    "orchestrator": [
        Method("/voicebus.v1.Assistant/ProcessTurn", assistant_pb2.ProcessTurnRequest, False, False),
        Method("/voicebus.v1.Assistant/Converse", assistant_pb2.ConverseRequest, True, True),
        Method("/voicebus.v1.Assistant/GetConversation", assistant_pb2.GetConversationRequest, False, False),
        Method("/voicebus.v1.Assistant/ListConversations", assistant_pb2.ListConversationsRequest, False, False),
        Method("/voicebus.v1.Assistant/DeleteConversation", assistant_pb2.DeleteConversationRequest, False, False),
    ],
    "stt": [
        Method("/voicebus.v1.SpeechToText/Transcribe", stt_pb2.TranscribeRequest, False, False),
        Method("/voicebus.v1.SpeechToText/StreamingTranscribe", stt_pb2.StreamingTranscribeRequest, True, True),
    ],
    "llm": [
        Method("/voicebus.v1.LanguageModel/Generate", llm_pb2.GenerateRequest, False, True),
        Method("/voicebus.v1.LanguageModel/ListModels", llm_pb2.ListModelsRequest, False, False),
    ],
    "tts": [
        Method("/voicebus.v1.TextToSpeech/Synthesize", tts_pb2.SynthesizeRequest, False, True),
        Method("/voicebus.v1.TextToSpeech/StreamingSynthesize", tts_pb2.StreamingSynthesizeRequest, True, True),
        Method("/voicebus.v1.TextToSpeech/ListVoices", tts_pb2.ListVoicesRequest, False, False),
    ],
}
# Fields whose random values would only buy time, not coverage: answers stay a few tokens
# long (or are refused), texts to speak stay short (or over the limit).
SHORT_TEXTS = ["", " ", "Hi.", "Say hi.", "\x00", "नमस्ते", "'; DROP TABLE x; --", "<b>x</b>", "a" * 5_001, "a" * 17_000]
OVERRIDES = {
    "voicebus.v1.GenerateRequest.max_tokens": [-1, 1, 4, 2_049, 2**31 - 1],
    "voicebus.v1.GenerateRequest.history_token_budget": [-1, 0, 64, 2**31 - 1],
    "voicebus.v1.SynthesizeRequest.text": SHORT_TEXTS,
    "voicebus.v1.StreamingSynthesizeRequest.text": SHORT_TEXTS,
}
# Deliberately corrupted bytes may fail in grpc's own deserializer (UNKNOWN for unary calls,
# with the DecodeError named) or reach a handler that reports it.
CLEAN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
         grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ABORTED, grpc.StatusCode.ALREADY_EXISTS}
UNDECODABLE = ("DecodeError", "deserializ", "parse")


def _requests(rng: random.Random, method: Method) -> tuple[list[bytes], bool]:
    """The serialized request(s) of one call, and whether any was corrupted on purpose."""
    count = rng.randint(1, 4) if method.streaming_in else 1
    messages, corrupted = [], False
    for index in range(count):
        message = fuzz_inputs.proto_message(rng, method.request, OVERRIDES)
        if index == 0 and method.streaming_in and rng.random() < 0.8:
            config = fuzz_inputs.proto_message(rng, method.request, OVERRIDES)
            if "config" in method.request.DESCRIPTOR.fields_by_name:  # a stream opens with its config
                message = method.request(config=getattr(config, "config"))
        data = message.SerializeToString()
        if rng.random() < 0.3:
            data, corrupted = fuzz_inputs.corrupt(rng, method.request, data, truncate=method.request is not
                                                  llm_pb2.GenerateRequest), True
        messages.append(data)
    return messages, corrupted


def _call(channel: grpc.Channel, method: Method, messages: list[bytes]) -> Iterator[bytes] | bytes:
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    call = kinds[(method.streaming_in, method.streaming_out)](method.path, request_serializer=None,
                                                              response_deserializer=None)
    request = iter(messages) if method.streaming_in else messages[0]
    reply = call(request, timeout=DEADLINE, metadata=METADATA)
    return list(reply) if method.streaming_out else reply


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_grpc_fuzz_gives_clean_statuses(stack, service):
    rng, failures = random.Random(f"{SEED}-{service}"), []
    with grpc.insecure_channel(stack.env[f"VOICEBUS_{service.upper()}_ADDR"],
                               options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as channel:
        for number in range(GRPC_CASES):
            method = rng.choice(SERVICES[service])
            messages, corrupted = _requests(rng, method)
            try:
                _call(channel, method, messages)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                decode_failure = corrupted and code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) and any(
                    word in details for word in UNDECODABLE)
                if code not in CLEAN and not decode_failure:
                    failures.append((number, method.path, [m[:80] for m in messages], code.name, details[:300]))
    assert not failures, f"seed {SEED}-{service}: {len(failures)} of {GRPC_CASES} calls failed:\n" + "\n".join(
        map(str, failures[:20]))
    assert_stack_alive(stack)
