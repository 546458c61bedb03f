"""Gateway latency over the real stack (SmolLM2-135M, Piper, tiny.en), and what the
gateway itself adds on top of the orchestrator.

    .venv/bin/python bench/gateway_latency.py [--turns 5]

Prints, per path: the client's wall time, the orchestrator's own figure for the same
turn, and the difference (HTTP/WS + JSON/base64 + the gateway's gRPC hop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
from common import NatsServer, percentile, summary  # noqa: F401 - sets sys.path
from websockets.asyncio.client import connect

from gateway_stack import AUTH, QUESTION, pcm16_at, speech_wav, start_stack, wav_pcm


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


async def ws_turns(ws_url: str, pcm16k: bytes, n: int) -> dict[str, list[float]]:
    """PCM16 streamed in real time (100 ms frames), like a live microphone."""
    out: dict[str, list[float]] = {"first_audio": [], "first_audio_overhead": [], "first_text": []}
    async with connect(ws_url, additional_headers=AUTH, max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "start", "format": "pcm16", "sample_rate": 16000}))
        await ws.recv()
        for _ in range(n):
            for i in range(0, len(pcm16k), 3200):
                await ws.send(pcm16k[i:i + 3200])
                await asyncio.sleep(0.1)
            await ws.send(json.dumps({"type": "end_of_audio"}))
            ended = time.perf_counter()
            first_audio = first_text = None
            while True:
                message = await asyncio.wait_for(ws.recv(), 180)
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                now = time.perf_counter() - ended
                if event["type"] == "response_delta" and first_text is None:
                    first_text = now
                if event["type"] == "audio" and first_audio is None:
                    first_audio = now
                if event["type"] in ("turn_completed", "turn_failed", "turn_interrupted"):
                    break
            if first_audio is not None and first_text is not None:
                out["first_audio"].append(first_audio)
                out["first_text"].append(first_text)
                out["first_audio_overhead"].append(first_audio - event["turn"]["timings"]["first_audio_seconds"])
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
        ws = asyncio.run(ws_turns(stack.ws_url, pcm16_at(pcm, rate, 16000), args.turns))
    finally:
        for stop in stops:
            stop()
        nats.stop()
    print(summary("GET /api/conversations", rest["list"]))
    print(summary("POST /api/chat (text), client wall", rest["chat_wall"]))
    print(summary("  gateway overhead (wall - turn total)", rest["chat_overhead"]))
    print(summary("POST /api/process_audio (WAV), client wall", rest["audio_wall"]))
    print(summary("  gateway overhead (wall - turn total)", rest["audio_overhead"]))
    print(summary("WS end_of_audio -> first response_delta", ws["first_text"]))
    print(summary("WS end_of_audio -> first audio chunk", ws["first_audio"]))
    print(summary("  gateway overhead (vs orchestrator's)", ws["first_audio_overhead"]))


if __name__ == "__main__":
    main()
