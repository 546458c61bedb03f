"""Load benchmark: N conversations at once over the gateway's WebSocket, typed and spoken.

    .venv/bin/python bench/load.py [-n 8] [--mode typed|spoken|both] [--turns 1] [--llm-model qwen2.5-0.5b]
    .venv/bin/python bench/load.py -n 20 --url http://127.0.0.1:8000   # a stack that is already running
    .venv/bin/python bench/load.py -n 50 --mode typed --set VOICEBUS_LLM_TIMEOUT_SECONDS=600

Starts NATS, STT, LLM (local provider only), TTS, the orchestrator and the gateway on free
ports (unless --url), then opens N WebSockets at the same moment. Each conversation sends
its turns one after another: typed turns as `text` messages, spoken turns as espeak-ng
speech streamed as PCM16 at real time with `end_of_audio` right after the last sample.
The clock of a turn starts when its text is sent or its speech ends.

Prints, per mode: turns completed, turns spoken (audio received), p50/p95 first audio,
errors by code (WebSocket `error` events and failed turns), degraded stages, the turns
SQLite kept (each conversation read back over REST), and the load average (1 min, at the
end; the highest seen during the run too). The machine has 2 cores: numbers vary with load.

For a started stack it also prints each service's CPU time per turn (user + system, from
/proc) and what that makes one core of it serve: conversations in which the user speaks
once every --turn-every seconds (sizing for many machines; the README's Running on many
machines quotes it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets
from common import ROOT, NatsServer, ServiceProcess, espeak_wav, free_port, percentile  # sets sys.path
from turn import QUESTIONS, load_pcm

TURN_ENDS = ("turn_completed", "turn_interrupted", "turn_failed")
TURN_TIMEOUT_SECONDS = 900.0  # 50 turns queue behind one LLM on 2 cores: slow is fine, lost is not


@dataclass
class TurnResult:
    outcome: str = "no_answer"  # completed / failed / interrupted / error / no_answer
    audio_bytes: int = 0
    first_audio: float | None = None
    errors: list[str] = field(default_factory=list)  # "<status> <code>" of each error event
    degraded: list[str] = field(default_factory=list)
    turn_id: str = ""


@dataclass
class Conversation:
    conversation_id: str = ""
    turns: list[TurnResult] = field(default_factory=list)


async def run_turn(ws, send_input) -> TurnResult:  # noqa: ANN001 - a websockets connection
    """Send one turn's input (`send_input` returns when the user has finished) and read its events."""
    result = TurnResult()
    started = await send_input()
    while True:
        message = await ws.recv()
        if isinstance(message, bytes):
            continue  # the audio bytes announced by the `audio` event before them
        event = json.loads(message)
        kind = event["type"]
        if kind == "audio" and event.get("bytes"):
            result.audio_bytes += event["bytes"]
            if result.first_audio is None:
                result.first_audio = time.monotonic() - started
        elif kind == "degraded":
            result.degraded.append(event.get("stage", "?"))
        elif kind == "error":
            result.errors.append(f"{event.get('status')} {event.get('code')}")
            if event.get("fatal") or not event.get("turn_id"):
                result.outcome = "error"
                return result
        elif kind in TURN_ENDS:
            result.outcome = kind.removeprefix("turn_")
            result.turn_id = event.get("turn_id") or event.get("turn", {}).get("turn_id", "")
            return result


async def conversation(url: str, mode: str, questions: list[str], speech: dict[str, tuple[bytes, int]],
                       go: asyncio.Event) -> Conversation:
    out = Conversation()
    async with websockets.connect(url, max_size=None, open_timeout=120, ping_interval=None) as ws:
        start: dict = {"type": "start", "output_format": "pcm16"}
        if mode == "spoken":
            start |= {"format": "pcm16", "sample_rate": speech[questions[0]][1]}
        await ws.send(json.dumps(start))
        opened = json.loads(await ws.recv())
        out.conversation_id = opened.get("conversation_id", "")
        await go.wait()  # every conversation starts its first turn at the same moment
        for question in questions:
            async def send_text() -> float:
                await ws.send(json.dumps({"type": "text", "text": question}))
                return time.monotonic()

            async def send_speech() -> float:
                pcm, rate = speech[question]
                step = rate // 50 * 2  # 20 ms frames, as a microphone sends them
                for i in range(0, len(pcm), step):
                    await ws.send(pcm[i:i + step])
                    await asyncio.sleep(0.02)
                ended = time.monotonic()
                await ws.send(json.dumps({"type": "end_of_audio"}))
                return ended

            try:
                result = await asyncio.wait_for(run_turn(ws, send_text if mode == "typed" else send_speech),
                                                TURN_TIMEOUT_SECONDS)
            except (asyncio.TimeoutError, websockets.ConnectionClosed) as exc:
                result = TurnResult(outcome="no_answer", errors=[type(exc).__name__])
            out.turns.append(result)
            if result.outcome == "error" and not result.turn_id:
                break
    return out


async def stored_turns(base: str, conversations: list[Conversation]) -> tuple[int, collections.Counter]:
    """How many turns SQLite kept (read back over REST), by stored outcome."""
    outcomes: collections.Counter = collections.Counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for c in conversations:
            if not c.conversation_id:
                continue
            reply = await client.get(f"/api/conversations/{c.conversation_id}")
            if reply.status_code == 200:
                outcomes.update(t["outcome"] for t in reply.json().get("turns", []))
    return sum(outcomes.values()), outcomes


async def watch_load(peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], os.getloadavg()[0])
        await asyncio.sleep(1.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/<pid>/stat, Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_sizing(used: dict[str, float], turns: int, turn_every: float) -> None:
    """CPU per turn of each service, and the conversations one core of it carries."""
    if not turns:
        return
    print(f"  CPU per turn       (one core carries this many conversations speaking every {turn_every:.0f} s)")
    for name, seconds in used.items():
        per_turn = seconds / turns
        carried = turn_every / per_turn if per_turn > 0 else float("inf")
        print(f"    {name:<13} {per_turn:6.3f} s/turn  {carried:7.1f} conversations/core")


async def run_mode(base: str, mode: str, n: int, turns: int, speech: dict[str, tuple[bytes, int]],
                   pids: dict[str, int], turn_every: float) -> None:
    ws_url = base.replace("http://", "ws://") + "/ws"
    go = asyncio.Event()
    peak, stop = [os.getloadavg()[0]], asyncio.Event()
    watcher = asyncio.create_task(watch_load(peak, stop))
    jobs = [asyncio.create_task(conversation(ws_url, mode, [QUESTIONS[(i + t) % len(QUESTIONS)] for t in range(turns)],
                                             speech, go)) for i in range(n)]
    await asyncio.sleep(1.0)  # the WebSockets open; then every first turn starts at once
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    began = time.monotonic()
    go.set()
    done = await asyncio.gather(*jobs, return_exceptions=True)
    took = time.monotonic() - began
    cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    stop.set()
    await watcher
    conversations = [d for d in done if isinstance(d, Conversation)]
    crashed = [d for d in done if not isinstance(d, Conversation)]
    results = [t for c in conversations for t in c.turns]
    completed = [t for t in results if t.outcome == "completed"]
    spoken = [t for t in completed if t.audio_bytes]
    first_audio = [t.first_audio for t in spoken if t.first_audio is not None]
    errors = collections.Counter(e for t in results for e in t.errors)
    errors.update(f"turn {t.outcome}" for t in results if t.outcome not in ("completed", "error"))
    errors.update(f"client {type(d).__name__}: {str(d)[:60]}" for d in crashed)
    degraded = collections.Counter(d for t in results for d in t.degraded)
    stored, stored_outcomes = await stored_turns(base, conversations)
    expected = n * turns
    print(f"\n{mode} x {n} at once, {turns} turn(s) each ({expected} turns, {took:.0f} s)")
    print(f"  completed          {len(completed)}/{expected}")
    print(f"  spoken (audio)     {len(spoken)}/{expected}")
    if first_audio:
        print(f"  first audio        p50={percentile(first_audio, 50):.2f}s p95={percentile(first_audio, 95):.2f}s "
              f"max={max(first_audio):.2f}s")
    print(f"  errors by code     {dict(errors) or 'none'}")
    print(f"  degraded stages    {dict(degraded) or 'none'}")
    print(f"  stored in SQLite   {stored}/{expected} {dict(stored_outcomes)}")
    print(f"  load average       {os.getloadavg()[0]:.2f} at the end, {peak[0]:.2f} at most (1 min)")
    print_sizing(cpu_used, len(completed), turn_every)


def start_stack(llm_model: str, overrides: dict[str, str]) -> tuple[str, list, dict[str, int]]:
    """The stack on free ports: the gateway's URL, the stop functions, each service's pid."""
    nats = NatsServer()
    ports = {name: free_port() for name in ("stt", "llm", "tts", "orchestrator", "gateway")}
    # The models assembled once in data/ (as bench/turn.py); the conversations in a fresh SQLite file.
    env = {"VOICEBUS_NATS_URL": nats.url, "VOICEBUS_DATA_DIR": str(ROOT / "data"),
           "VOICEBUS_DB_PATH": str(Path(tempfile.mkdtemp(prefix="voicebus-load-")) / "voicebus.db"),
           "GROQ_API_KEY": "", "VOICEBUS_LLM_PROVIDERS": "local", "VOICEBUS_LLM_LOCAL_MODEL": llm_model,
           "VOICEBUS_METRICS_PORT_OFFSET": "0", "VOICEBUS_LOG_LEVEL": "WARNING", "VOICEBUS_TRACE_VIEW": "false",
           **{f"VOICEBUS_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()}, **overrides}
    procs = [ServiceProcess(f"{n}_service" if n != "orchestrator" else n, env[f"VOICEBUS_{n.upper()}_ADDR"], env,
                            name=f"load-{n}") for n in ("stt", "llm", "tts", "orchestrator")]
    stops = [nats.stop, *(p.stop for p in procs)]
    for proc in procs:
        proc.wait_healthy(300)
    gateway = ServiceProcess("web_gateway", env["VOICEBUS_GATEWAY_ADDR"], env, name="load-gateway")
    stops.insert(0, gateway.stop)
    pids = {**{p.name.removeprefix("load-"): p.proc.pid for p in procs}, "gateway": gateway.proc.pid}
    base = f"http://{env['VOICEBUS_GATEWAY_ADDR']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return base, stops, pids
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the gateway is not ready; see {gateway.log_path}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--conversations", type=int, default=8, help="conversations at once")
    parser.add_argument("--mode", choices=("typed", "spoken", "both"), default="both")
    parser.add_argument("--turns", type=int, default=1, help="turns per conversation, one after another")
    parser.add_argument("--llm-model", default="qwen2.5-0.5b", help="VOICEBUS_LLM_LOCAL_MODEL of the started stack")
    parser.add_argument("--url", help="the gateway of a running stack (no token) instead of starting one")
    parser.add_argument("--set", action="append", default=[], metavar="VOICEBUS_X=VALUE",
                        help="a setting for every service of the started stack (repeatable)")
    parser.add_argument("--turn-every", type=float, default=15.0,
                        help="seconds between a user's turns, for the conversations-per-core estimate")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)

    speech: dict[str, tuple[bytes, int]] = {}
    if args.mode != "typed":
        work = Path(tempfile.mkdtemp(prefix="voicebus-load-speech-"))
        for i, q in enumerate(QUESTIONS):
            speech[q] = load_pcm(espeak_wav(q, work / f"q{i}.wav", speed=170))
    stops: list = []
    pids: dict[str, int] = {}  # a running stack's processes are not ours to measure
    try:
        if args.url:
            base = args.url.rstrip("/")
        else:
            base, stops, pids = start_stack(args.llm_model, overrides)
        print(f"load average before: {os.getloadavg()[0]:.2f}; gateway {base}; LLM "
              f"{'as running' if args.url else args.llm_model}" + "".join(f"; {k}={v}" for k, v in overrides.items()))
        for mode in (("typed", "spoken") if args.mode == "both" else (args.mode,)):
            await run_mode(base, mode, args.conversations, args.turns, speech, pids, args.turn_every)
    finally:
        for stop in stops:
            stop()


if __name__ == "__main__":
    asyncio.run(main())
