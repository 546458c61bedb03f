"""Gateway latency over the real stack (SmolLM2-135M, Piper, tiny.en), and what the
gateway itself adds on top of the orchestrator.

    .venv/bin/python bench/gateway_latency.py [--turns 5]

REST: the client's wall time and what it adds to the orchestrator's own figure for the
turn (HTTP + JSON/base64 + the gateway's gRPC hop). WebSocket: end of audio to the first
answer text and audio, over the gateway and straight to the orchestrator's Converse,
turns alternating between the two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from common import NatsServer, summary  # sets sys.path
from websockets.asyncio.client import connect

from gateway_stack import AUTH, QUESTION, pcm16_at, speech_wav, start_stack, wav_pcm
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc, audio_pb2


def rest_turns(base: str, wav: bytes, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in ("list", "chat_wall", "chat_overhead", "audio_wall", "audio_overhead")}
    with httpx.Client(base_url=base, headers=AUTH, timeout=180) as client:
        client.post("/api/chat", json={"text": "Hi."})  # warm-up: first LLM/TTS call
        for _ in range(n):
            started = time.perf_counter()
            client.get("/api/conversations").raise_for_status()
            out["list"].append(time.perf_counter() - started)

            started = time.perf_counter()
            reply = client.post("/api/chat", json={"text": "What is the capital of France?"})
            wall = time.perf_counter() - started
            reply.raise_for_status()
            out["chat_wall"].append(wall)
            out["chat_overhead"].append(wall - reply.json()["timings"]["total_seconds"])

            started = time.perf_counter()
            reply = client.post("/api/process_audio", files={"file": ("q.wav", wav, "audio/wav")})
            wall = time.perf_counter() - started
            reply.raise_for_status()
            out["audio_wall"].append(wall)
            out["audio_overhead"].append(wall - reply.json()["timings"]["total_seconds"])
    return out


async def stream_pcm(send, pcm16k: bytes) -> None:
    for i in range(0, len(pcm16k), 3200):  # 100 ms frames in real time, like a live microphone
        await send(pcm16k[i:i + 3200])
        await asyncio.sleep(0.1)


async def ws_turn(ws, pcm16k: bytes) -> tuple[float, float]:
    """(end_of_audio -> first response_delta, end_of_audio -> first audio chunk) over the gateway."""
    await stream_pcm(ws.send, pcm16k)
    await ws.send(json.dumps({"type": "end_of_audio"}))
    ended, first_text, first_audio = time.perf_counter(), float("nan"), float("nan")
    while True:
        message = await asyncio.wait_for(ws.recv(), 180)
        if isinstance(message, bytes):
            continue
        event = json.loads(message)
        now = time.perf_counter() - ended
        if event["type"] == "response_delta" and first_text != first_text:
            first_text = now
        if event["type"] == "audio" and first_audio != first_audio:
            first_audio = now
        if event["type"] in ("turn_completed", "turn_failed", "turn_interrupted"):
            return first_text, first_audio


async def grpc_turn(requests: asyncio.Queue, responses, pcm16k: bytes) -> tuple[float, float]:
    """The same turn straight to the orchestrator's Converse (no gateway)."""
    await stream_pcm(lambda data: requests.put(assistant_pb2.ConverseRequest(audio=data)), pcm16k)
    await requests.put(assistant_pb2.ConverseRequest(end_of_audio=assistant_pb2.EndOfAudio()))
    ended, first_text, first_audio = time.perf_counter(), float("nan"), float("nan")
    while True:
        event = await asyncio.wait_for(responses.__anext__(), 180)
        kind, now = event.WhichOneof("event"), time.perf_counter() - ended
        if kind == "response_delta" and first_text != first_text:
            first_text = now
        if kind == "audio" and first_audio != first_audio:
            first_audio = now
        if kind in ("turn_completed", "turn_failed", "turn_interrupted"):
            return first_text, first_audio


async def ws_versus_grpc(stack, pcm16k: bytes, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in ("ws_text", "ws_audio", "grpc_text", "grpc_audio")}
    requests: asyncio.Queue = asyncio.Queue()

    async def request_stream():
        while True:
            yield await requests.get()

    await requests.put(assistant_pb2.ConverseRequest(config=assistant_pb2.ConverseConfig(
        interim_results=True, input_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16,
                                                                 sample_rate_hz=16000),
        options=assistant_pb2.TurnOptions(synthesize_audio=True))))
    async with grpc.aio.insecure_channel(stack.env["VOICEBUS_ORCHESTRATOR_ADDR"]) as channel, \
            connect(stack.ws_url, additional_headers=AUTH, max_size=2**24) as ws:
        call = assistant_pb2_grpc.AssistantStub(channel).Converse(
            request_stream(), metadata=(("authorization", AUTH["Authorization"]),))
        responses = call.__aiter__()
        await responses.__anext__()  # conversation_opened
        await ws.send(json.dumps({"type": "start", "format": "pcm16", "sample_rate": 16000}))
        await ws.recv()
        for _ in range(n):  # alternate, so that machine noise hits both alike
            for key, (text, audio) in (("ws", await ws_turn(ws, pcm16k)),
                                       ("grpc", await grpc_turn(requests, responses, pcm16k))):
                out[f"{key}_text"].append(text)
                out[f"{key}_audio"].append(audio)
        call.cancel()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    wav_path = speech_wav(QUESTION, folder / "q.wav", tail_silence=0.3)
    pcm, rate = wav_pcm(wav_path)
    nats, stops = NatsServer(), []
    try:
        stack = start_stack(nats.url, stops)
        rest = rest_turns(stack.base, wav_path.read_bytes(), args.turns)
        ws = asyncio.run(ws_versus_grpc(stack, pcm16_at(pcm, rate, 16000), args.turns))
    finally:
        for stop in stops:
            stop()
        nats.stop()
    print(summary("GET /api/conversations", rest["list"]))
    print(summary("POST /api/chat (text), client wall", rest["chat_wall"]))
    print(summary("  gateway overhead (wall - turn total)", rest["chat_overhead"]))
    print(summary("POST /api/process_audio (WAV), client wall", rest["audio_wall"]))
    print(summary("  gateway overhead (wall - turn total)", rest["audio_overhead"]))
    print(summary("WS end_of_audio -> first response_delta", ws["ws_text"]))
    print(summary("  same, gRPC Converse without the gateway", ws["grpc_text"]))
    print(summary("WS end_of_audio -> first audio chunk", ws["ws_audio"]))
    print(summary("  same, gRPC Converse without the gateway", ws["grpc_audio"]))


if __name__ == "__main__":
    main()
