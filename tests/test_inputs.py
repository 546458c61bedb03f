"""Hostile input at the gateway (issue 12, part 2): every limit of web_gateway/limits.py is a
4xx with words over REST and an error event over the WebSocket, the connection (and the
socket) stays up, and a conversation seeded right up to the limits keeps answering.

Runs on the real stack of tests/gateway_stack.py (SmolLM2-135M, tiny.en, Piper)."""

from __future__ import annotations

import asyncio
import http.client
import json
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect

import hostile_audio
from gateway_stack import AUTH, shared_stack
from web_gateway import limits

TURN_END = ("turn_completed", "turn_failed", "turn_interrupted")
LONG_ID = "a" * 17_000  # over gRPC's 16 KB metadata limit once quoted in an error


@pytest.fixture(scope="module")
def stack(nats_server, request):
    return shared_stack(nats_server.url, request.config)


@pytest.fixture(scope="module")
def client(stack):
    with httpx.Client(base_url=stack.base, headers=AUTH, timeout=180) as c:
        yield c


def raw_json(body: str) -> dict:
    """A body spelled by hand: json.dumps cannot write a lone surrogate, a client can."""
    return {"content": body.encode(), "headers": {"Content-Type": "application/json"}}


def assert_error(reply: httpx.Response, status: int, code: str, fragment: str) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and fragment in error["message"], error


SURROGATE = "lone UTF-16 surrogate"
NOT_AN_ID = "conversation ids are 1 to 128 characters"
CHAT_CASES = {
    "surrogate in text": (raw_json('{"text": "\\ud800"}'), 422, "invalid_argument", SURROGATE),
    "surrogate in conversation_id": (raw_json('{"text": "hi", "conversation_id": "\\ud800"}'), 422,
                                     "invalid_argument", SURROGATE),
    "surrogate in language": (raw_json('{"text": "hi", "language": "x\\udfff"}'), 422, "invalid_argument", SURROGATE),
    "surrogate in history": (raw_json('{"text": "hi", "history": [{"role": "user", "content": "\\udc00"}]}'), 422,
                             "invalid_argument", SURROGATE),
    "text over the limit": ({"json": {"text": "x" * (limits.TEXT_MAX_CHARS + 1)}}, 422, "invalid_argument",
                            "the limit is 8000"),
    "history message over the limit": ({"json": {"text": "hi", "history": [
        {"role": "user", "content": "x" * (limits.TEXT_MAX_CHARS + 1)}]}}, 422, "invalid_argument",
        "history[0].content is 8001 characters"),
    "too many history messages": ({"json": {"text": "hi", "history": [{"role": "user", "content": "x"}] * 10_000}},
                                  422, "invalid_argument", "history has 10000 messages; the limit is 100"),
    "a megabyte of language": ({"json": {"text": "hi", "language": "x" * 1_000_000}}, 422, "invalid_argument",
                               "is not a language code"),
    "language one over": ({"json": {"text": "hi", "language": "e" * 36}}, 422, "invalid_argument",
                          "is not a language code"),
    "language with odd characters": ({"json": {"text": "hi", "language": "en_US"}}, 422, "invalid_argument",
                                     "is not a language code"),
    "16 KB conversation id": ({"json": {"text": "hi", "conversation_id": LONG_ID}}, 404, "not_found", NOT_AN_ID),
    "conversation id with a dot": ({"json": {"text": "hi", "conversation_id": "a.b"}}, 404, "not_found", NOT_AN_ID),
}


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_chat_refuses_hostile_fields(client, case):
    kwargs, status, code, fragment = CHAT_CASES[case]
    assert_error(client.post("/api/chat", **kwargs), status, code, fragment)


def test_conversation_routes_refuse_ids_that_cannot_exist_and_odd_page_tokens(client):
    for conversation_id in (LONG_ID, "a.b", "caf\u00e9", "%20"):
        assert_error(client.get(f"/api/conversations/{conversation_id}"), 404, "not_found", "no conversation")
        assert_error(client.delete(f"/api/conversations/{conversation_id}"), 404, "not_found", "no conversation")
    upload = {"content": hostile_audio.wav(16_000, bytes(3_200)), "headers": {"Content-Type": "audio/wav"}}
    assert_error(client.post("/api/process_audio", params={"conversation_id": LONG_ID}, **upload), 404,
                 "not_found", NOT_AN_ID)
    assert_error(client.post("/api/process_audio", params={"language": "x" * 36}, **upload), 422,
                 "invalid_argument", "is not a language code")
    for token in ("1180591620717411303424", "-1", "+5", "1_000", "abc", "1" * 10):
        assert_error(client.get("/api/conversations", params={"page_token": token}), 422, "invalid_argument",
                     "page_token")
    for token in ("", "0", "999999999"):
        assert client.get("/api/conversations", params={"page_token": token}).status_code == 200, token


def test_a_one_hertz_wav_is_refused_through_the_whole_stack(client):
    one_hz = hostile_audio.wav(1, bytes(8_000))
    reply = client.post("/api/process_audio", content=one_hz, headers={"Content-Type": "audio/wav"})
    assert_error(reply, 422, "invalid_argument", "sample rate of 1 Hz")


def test_a_conversation_seeded_to_the_limits_keeps_answering(client):
    """The most history the gateway takes, and a language code as long as it allows: the
    turn and the next one answer (a 9,000-character message used to break every later turn)."""
    history = [{"role": "user", "content": "w" * limits.TEXT_MAX_CHARS}, {"role": "assistant", "content": "Okay."}]
    history *= limits.HISTORY_MAX_MESSAGES // 2
    first = client.post("/api/chat", json={"text": "Say hello.", "history": history, "synthesize_audio": False,
                                           "language": "en-" + "x" * (limits.LANGUAGE_MAX_CHARS - 3)})
    assert first.status_code == 200, first.text
    assert first.json()["outcome"] == "completed"
    cid = first.json()["conversation_id"]
    second = client.post("/api/chat", json={"text": "Say goodbye.", "conversation_id": cid,
                                            "synthesize_audio": False})
    assert second.status_code == 200, second.text
    assert second.json()["outcome"] == "completed"
    stored = client.get(f"/api/conversations/{cid}").json()
    assert stored["turn_count"] == limits.HISTORY_MAX_MESSAGES // 2 + 2
    assert stored["turns"][0]["user_text"] == "w" * limits.TEXT_MAX_CHARS


def test_a_refused_request_leaves_keep_alive_connections_open(stack):
    """A lone surrogate used to be an unhandled error that dropped the connections."""
    address = urlsplit(stack.base)
    first, second = (http.client.HTTPConnection(address.hostname, address.port, timeout=60) for _ in range(2))
    try:
        for connection in (first, second):
            connection.request("GET", "/healthz")
            assert connection.getresponse().read() == b'{"status":"ok"}'
        sockets = (first.sock, second.sock)
        first.request("POST", "/api/chat", body=b'{"text": "\\ud800"}',
                      headers={**AUTH, "Content-Type": "application/json"})
        refused = first.getresponse()
        assert refused.status == 422 and refused.getheader("connection") != "close"
        assert json.loads(refused.read())["error"]["code"] == "invalid_argument"
        for connection in (first, second):
            connection.request("GET", "/healthz")
            assert connection.getresponse().status == 200
        assert (first.sock, second.sock) == sockets  # the same connections, not new ones
    finally:
        first.close()
        second.close()


# ---- WebSocket: an error event each, and the socket stays open ------------------------------
async def receive_json(ws, timeout: float = 60.0) -> dict:
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(message, str):
            return json.loads(message)


WS_REFUSED = [
    ('{"type": "text", "text": "\\ud800"}', "invalid_argument", 422, SURROGATE),
    ('{"type": "start", "language": "\\udc00"}', "invalid_argument", 422, SURROGATE),
    ('{"\\ud800": "start"}', "invalid_argument", 422, SURROGATE),
    ("[" * 100_000 + "]" * 100_000, "invalid_json", 400, "JSON"),
    ('{"type": "start", "sample_rate": ' + "9" * 5_000 + "}", "invalid_json", 400, "JSON"),
    ('{"type": "start", "format": "pcm16", "sample_rate": 1e400}', "invalid_start", 422, "infinity"),
    (json.dumps({"type": "start", "language": "x" * 1_000_000}), "invalid_start", 422, "not a language code"),
    (json.dumps({"type": "start", "voice": "v" * 101}), "invalid_start", 422, "voice is 101 characters"),
    (json.dumps({"type": "text", "text": "x" * (limits.TEXT_MAX_CHARS + 1)}), "invalid_argument", 422,
     "the limit is 8000"),
]


async def test_ws_hostile_messages_are_error_events_and_the_socket_stays_open(stack):
    async with connect(stack.ws_url, additional_headers=AUTH, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "start"}))
        opened = await receive_json(ws)
        assert opened["type"] == "conversation_opened"
        for raw, code, status, fragment in WS_REFUSED:
            await ws.send(raw)
            event = await receive_json(ws)
            assert (event["type"], event["code"], event["status"], event["fatal"]) == ("error", code, status, False)
            assert fragment in event["message"], (raw[:60], event)
        # The stream those refusals left alone still answers, in the same conversation.
        await ws.send(json.dumps({"type": "text", "text": "Say hello."}))
        while (event := await receive_json(ws, 120))["type"] not in TURN_END:
            assert event["type"] != "error", event
        assert event["type"] == "turn_completed" and event["conversation_id"] == opened["conversation_id"]


async def test_ws_start_with_an_id_that_cannot_exist_is_not_found(stack):
    async with connect(stack.ws_url, additional_headers=AUTH, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "start", "conversation_id": LONG_ID}))
        event = await receive_json(ws)
        assert (event["type"], event["code"], event["status"], event["fatal"]) == ("error", "not_found", 404, True)
        assert NOT_AN_ID in event["message"]
        await ws.send(json.dumps({"type": "text", "text": "Hello?"}))  # as after an unknown id: start again
        assert (await receive_json(ws))["code"] == "no_stream"
        await ws.send(json.dumps({"type": "start"}))
        assert (await receive_json(ws))["type"] == "conversation_opened"


async def test_ws_undecodable_audio_is_reported_before_end_of_audio(stack):
    """A hands-free client never sends end_of_audio: it must hear about garbage anyway."""
    async with connect(stack.ws_url, additional_headers=AUTH, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "start", "format": "auto"}))
        assert (await receive_json(ws))["type"] == "conversation_opened"
        for _ in range(10):
            await ws.send(b"definitely not audio " * 100)
        event = await receive_json(ws, 60)
        assert (event["type"], event["code"], event["status"]) == ("error", "invalid_argument", 422), event
        assert "not audio in a format we can decode" in event["message"], event
        await ws.send(json.dumps({"type": "ping"}))
        while (event := await receive_json(ws))["type"] != "pong":
            pass
