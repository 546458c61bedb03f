"""Conversation benchmark: hands-free, push-to-talk and typed turns, barge-ins, backchannels and
paused sentences, interleaved in one run over the gateway's WebSocket by a client that plays in real time.

    .venv/bin/python bench/conversation.py [--turns 5] [--seed 14] [--voicebench 1] [-v] [--log events.jsonl]
    .venv/bin/python bench/conversation.py --url http://127.0.0.1:8000   # a stack already running (no token)
    .venv/bin/pip install -e '.[bench]'                                   # voicebench, for its part

Starts NATS, STT (tiny.en), LLM (local Qwen2.5-Coder-0.5B), TTS (Piper), the orchestrator and the gateway
on free ports (bench/load.py's start_stack) unless --url, and opens /ws with {"format": "pcm16",
"sample_rate": 16000, "playback": "realtime"}. The client (bench/conversation_audio.py) is a microphone
sending 20 ms PCM16 frames at real time (a frame leaves once its 20 ms are captured; a sample's time is
when it was captured) and a player: an answer plays from its first chunk's arrival, chunks back to
back, for the sum of their durations; `playback_paused` stops it, `playback_resumed` goes on,
`turn_interrupted` drops the rest; a `playback` report (turn_id, played_ms) goes every 0.5 s while it
plays and when its audio ends. Speech: espeak-ng en-us and en+f3 and Piper joe, chosen by the seed.

Each of --turns rounds is a new conversation with one turn of each kind, in a seeded order:
  hands-free    the question, then silence frames at real time: the server's VAD ends the turn
  push-to-talk  the question, `end_of_audio` right after its last sample (the mic off before it)
  typed         a `text` message
  paused        hands-free "I would like to book a table for" + 700 ms + "four people tomorrow evening"
Then the mic stays open (silence). Once 0.5-1.2 s of the answer has played (and 0.8 s more has come), a
question ("Tell me three ...") is spoken over it; once 0.5-1.2 s of that one's answer has played (1 s
more come), "mm-hmm", "okay", "yeah" or a noise burst (cough or door) is; then what runs is interrupted.

Printed (p50/p95, n = tries counted):
  <mode>: last speech sample -> final / -> first audio   the final `transcript` / first `audio` event
  typed: text sent -> first audio;  listening overhead = hands-free minus typed first audio p50
  barge-in stop   first sample of the question -> the first of `playback_paused` / `turn_interrupted`
                  for the playing turn: p50/p95/max, share within 300 ms (neither within 6 s: a miss,
                  counted in n); which came first; questions let pass (`playback_resumed`)
  false barge-ins backchannel or noise over an answer that got it `turn_interrupted`, or a new turn
                  answered (`response_delta`/`audio`) within 3 s of its end; how many paused it first
  cut-off         paused sentences heard as two finals or two turns
  voicebench      its own scenario (question, barge-in, "okay", follow-up, barge-in, cough) through
                  conversation_audio.VoicebusAdapter, measured by its energy VAD on the two tracks it
                  records; its false barge-in is "the agent went quiet within 1 s", which a correct
                  pause also is, so it is a cross-check for latency and stop time only
voicebench is optional: `.venv/bin/pip install -e '.[bench]'` (or --voicebench 0). The load
average (1, 5, 15 min) is printed before and after; the machine has 2 cores: numbers move with load.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import websockets
from common import percentile, summary  # sets sys.path
from conversation_audio import RATE, Mic, Playout, Speaker, noise_burst, noise_rng, speech_plan, voicebench_lines
from load import start_stack
from turn import LONG_QUESTIONS, QUESTIONS

ENDS = ("turn_completed", "turn_interrupted", "turn_failed")
SECOND_WORDS = ("four", "people", "tomorrow", "evening")


class Client:
    """The page: reads every event (with its arrival time), plays and reports playback."""

    def __init__(self, ws) -> None:  # noqa: ANN001
        self.ws, self.mic = ws, Mic(ws)
        self.log: list[tuple[float, dict]] = []
        self.changed = asyncio.Event()
        self.playouts: dict[str, Playout] = {}
        self.started: dict[str, str] = {}  # turn id -> input
        self.ended: set[str] = set()
        self.errors: collections.Counter = collections.Counter()
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._report())]

    async def _read(self) -> None:
        async for message in self.ws:
            if isinstance(message, bytes):
                continue  # the bytes of the `audio` event just before
            now, event = time.monotonic(), json.loads(message)
            kind, turn = event.get("type"), event.get("turn_id", "")
            if kind == "turn_started":
                self.started[turn] = event.get("input", "")
            elif kind == "audio":
                self.playouts.setdefault(turn, Playout()).delivered(event.get("duration", 0.0), now)
            elif kind == "playback_paused" and turn:  # its audio may not have come yet
                self.playouts.setdefault(turn, Playout()).pause(now)
            elif kind == "playback_resumed" and turn in self.playouts:
                self.playouts[turn].resume(now)
            elif kind in ENDS:
                self.ended.add(turn)
                if kind == "turn_interrupted" and turn in self.playouts:
                    self.playouts[turn].stop(now)
            elif kind == "transcript" and event.get("final"):
                self.mic.finals += 1
            elif kind == "error":
                self.errors[f"{event.get('status')} {event.get('code')}"] += 1
            self.log.append((now, event))
            self.changed.set()

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for turn, p in list(self.playouts.items()):
                if p.stopped or p.paused or p.reported_end:
                    continue
                played = p.played(now)
                if played >= p.total or now - p.last_report >= 0.5:
                    p.last_report, p.reported_end = now, played >= p.total
                    await self.ws.send(json.dumps({"type": "playback", "turn_id": turn,
                                                   "played_ms": int(played * 1000)}))

    async def wait(self, match, since: int, timeout: float) -> tuple[float, dict] | tuple[None, None]:  # noqa: ANN001
        """The first event from log index `since` on that `match`es, or (None, None) after `timeout`."""
        deadline, i = time.monotonic() + timeout, since
        while True:
            for t, event in self.log[i:]:
                if match(event):
                    return t, event
            i = len(self.log)
            if (left := deadline - time.monotonic()) <= 0:
                return None, None
            await self.news(left)

    async def news(self, timeout: float) -> None:
        self.changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    async def send(self, **message: object) -> None:
        await self.ws.send(json.dumps(message))

    async def settle(self, timeout: float = 30.0) -> None:
        """Interrupt whatever still runs, once per turn, and wait until every turn has ended."""
        interrupted: set[str] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [t for t in self.started if t not in self.ended]
            if not running:
                break
            answering = {e.get("turn_id") for _, e in self.log[-200:] if e.get("type") in ("response_delta", "audio")
                         or (e.get("type") == "transcript" and e.get("final"))}
            for turn in running:
                if turn not in interrupted and (turn in answering or self.started[turn] == "text"):
                    interrupted.add(turn)
                    await self.send(type="interrupt")
            await self.news(0.3)
        await asyncio.sleep(0.3)

    async def open_conversation(self) -> None:
        await self.settle()
        await self.mic.off(end=False)  # the new stream replaces the old one and its recording
        since = len(self.log)
        await self.send(type="start", format="pcm16", sample_rate=RATE, playback="realtime")
        self.mic.recording, self.mic.finals = False, 0
        await self.wait(lambda e: e.get("type") == "conversation_opened", since, 60)

    async def answer_of(self, since: int, not_in: set[str], timeout: float = 30.0) -> tuple[float | None, str]:
        t, event = await self.wait(lambda e: e.get("type") == "audio" and e.get("turn_id") not in not_in, since, timeout)
        return t, (event or {}).get("turn_id", "")


@dataclass
class Results:
    final: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    first_audio: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    missing: collections.Counter = field(default_factory=collections.Counter)
    stops: list[float | None] = field(default_factory=list)
    stop_kind: collections.Counter = field(default_factory=collections.Counter)
    resumed_questions: int = 0
    false: dict[str, list[bool]] = field(default_factory=lambda: collections.defaultdict(list))
    pauses: list[float] = field(default_factory=list)  # how long a backchannel kept the answer paused
    paused_by_backchannel: int = 0
    cut: list[bool] = field(default_factory=list)
    skipped: collections.Counter = field(default_factory=collections.Counter)
    late: float = 0.0
    took: float = 0.0


async def spoken_turn(c: Client, r: Results, mode: str, pcm: bytes) -> str:
    """A hands-free or push-to-talk question; returns the answered turn's id."""
    await c.settle()
    if mode == "push-to-talk":
        await c.mic.off()
        await c.settle()
    else:
        c.mic.listen()
    since, before = len(c.log), set(c.started)
    said = c.mic.say(pcm, push_to_talk=mode == "push-to-talk")
    last = await said.last
    t_final, event = await c.wait(lambda e: e.get("type") == "transcript" and e.get("final")
                                  and e.get("turn_id") not in before, since, 30)
    if t_final is None:
        r.missing[f"{mode}: no final"] += 1
        return ""
    r.final[mode].append(t_final - last)
    return await first_audio(c, r, mode, since, before, last)


async def first_audio(c: Client, r: Results, mode: str, since: int, before: set[str], clock: float) -> str:
    t_audio, turn = await c.answer_of(since, before)
    if t_audio is None:
        r.missing[f"{mode}: no audio"] += 1
        return ""
    r.first_audio[mode].append(t_audio - clock)
    return turn


async def typed_turn(c: Client, r: Results, text: str) -> str:
    await c.settle()
    since, before, sent = len(c.log), set(c.started), time.monotonic()
    await c.send(type="text", text=text)
    return await first_audio(c, r, "typed", since, before, sent)


async def paused_turn(c: Client, r: Results, pcm: bytes) -> str:
    await c.settle()
    c.mic.listen()
    since, before = len(c.log), set(c.started)
    last = await c.mic.say(pcm).last
    await c.wait(lambda e: e.get("type") == "transcript" and e.get("final")
                 and any(w in e.get("text", "").lower() for w in SECOND_WORDS), since, 8 + last - time.monotonic())
    events = [e for _, e in c.log[since:]]
    finals = [e for e in events if e.get("type") == "transcript" and e.get("final") and e.get("text", "").strip()]
    turns = {e.get("turn_id") for e in events if e.get("type") == "turn_started" and e.get("input") == "audio"}
    r.cut.append(len(finals) > 1 or len(turns) > 1)
    t_audio, turn = await c.answer_of(since, before | ({finals[0].get("turn_id")} if len(finals) > 1 else set()))
    return turn if t_audio else ""


async def until_playing(c: Client, turn: str, played: float, r: Results, trial: str, more: float) -> bool:
    """Wait until at least `played` seconds of `turn` have played with `more` seconds received."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and turn and turn not in c.ended:
        p, now = c.playouts.get(turn), time.monotonic()
        if p is not None and p.stopped:
            break
        if p is not None and p.played(now) >= played and p.total - p.played(now) >= more:
            return True
        await asyncio.sleep(0.01)
    r.skipped[trial] += 1
    return False


async def barge_in(c: Client, r: Results, host: str, pcm: bytes, delay: float) -> str:
    """A question over the playing answer; returns the id of the turn that answers it."""
    if not await until_playing(c, host, delay, r, "barge-in", 0.8):
        return ""
    since, before = len(c.log), set(c.started)
    first = await c.mic.say(pcm).first
    t, event = await c.wait(lambda e: e.get("type") in ("playback_paused", *ENDS)
                            and e.get("turn_id") == host, since, 6 + first - time.monotonic())
    if event and event["type"] in ("turn_completed", "turn_failed"):
        r.skipped["barge-in (answer ended first)"] += 1  # its audio had played: nothing to stop
    else:
        r.stops.append(None if t is None else t - first)
        r.stop_kind[event.get("type") if event else "neither within 6 s"] += 1
    t_audio, turn = await c.answer_of(since, before | {host})
    if any(e.get("type") == "playback_resumed" and e.get("turn_id") == host for _, e in c.log[since:]):
        r.resumed_questions += 1  # the question was taken for a backchannel
    return turn if t_audio else ""


async def over_answer(c: Client, r: Results, host: str, kind: str, pcm: bytes, delay: float) -> None:
    """A backchannel or noise over the playing answer: a false barge-in or not."""
    if not await until_playing(c, host, delay, r, kind, 1.0):
        return
    since, before = len(c.log), set(c.started)
    last = await c.mic.say(pcm).last

    def false(e: dict) -> bool:
        return (e.get("turn_id") == host and e.get("type") == "turn_interrupted") or \
            (e.get("turn_id") not in before and e.get("type") in ("response_delta", "audio"))

    await c.wait(lambda e: false(e) or (e.get("turn_id") == host and e.get("type") in ENDS + ("playback_resumed",)),
                 since, 3 + last - time.monotonic())
    await asyncio.sleep(0.3)  # an answer right after a resume would still count
    events = [(t, e) for t, e in c.log[since:] if t <= last + 3]
    r.false[kind].append(any(false(e) for _, e in events))
    paused = [t for t, e in events if e.get("type") == "playback_paused" and e.get("turn_id") == host]
    resumed = [t for t, e in events if e.get("type") == "playback_resumed" and e.get("turn_id") == host]
    r.paused_by_backchannel += bool(paused)
    if paused and resumed:
        r.pauses.append(resumed[0] - paused[0])


async def run(url: str, plan: list[tuple], warmup: bytes, verbose: bool, log_path: str | None) -> Results:
    r = Results()
    began = time.monotonic()
    async with websockets.connect(url, max_size=None, open_timeout=120, ping_interval=None) as ws:
        c = Client(ws)
        await c.open_conversation()
        await spoken_turn(c, Results(), "hands-free", warmup)  # caches, first-call costs; not counted
        for n, (mode, given, question, kind, over, d1, d2) in enumerate(plan):
            if n % 4 == 0:
                await c.open_conversation()
            counts = len(r.first_audio[mode]), len(r.stops), len(r.false[kind])
            if mode == "typed":
                host = await typed_turn(c, r, given)
            elif mode == "paused":
                host = await paused_turn(c, r, given)
            else:
                host = await spoken_turn(c, r, mode, given)
            c.mic.listen()  # hands-free while the answer plays
            await over_answer(c, r, await barge_in(c, r, host, question, d1), kind, over, d2)
            if verbose:
                audio = r.first_audio[mode][counts[0]:] or (r.cut[-1:] and [f"cut={r.cut[-1]}"]) or ["-"]
                stop = r.stops[counts[1]:] or ["skipped"]
                print(f"  [{time.monotonic() - began:4.0f} s] {mode:<12} first audio {audio[0]}  barge-in stop "
                      f"{stop[0]}  {kind}: false={(r.false[kind][counts[2]:] or ['skipped'])[0]}  "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
        await c.settle()
        for task in (*c.tasks, c.mic.task):
            task.cancel()
        r.missing.update({f"error {k}": v for k, v in c.errors.items()})
        r.late = c.mic.late
    if log_path:
        with open(log_path, "w") as f:
            f.writelines(json.dumps({"t": round(t - began, 3), **e}) + "\n" for t, e in c.log)
    r.took = time.monotonic() - began
    return r


def line(name: str, values: list[float]) -> str:
    return summary(name, values) if values else f"{name:<44} n=0"


def report(r: Results) -> None:
    for mode in ("hands-free", "push-to-talk"):
        print(line(f"{mode}: last speech sample -> final", r.final[mode]))
        print(line(f"{mode}: last speech sample -> first audio", r.first_audio[mode]))
    print(line("typed: text sent -> first audio", r.first_audio["typed"]))
    overhead = percentile(r.first_audio["hands-free"], 50) - percentile(r.first_audio["typed"], 50)
    print(f"{'listening overhead (hands-free - typed, p50)':<44} {overhead:.3f}s")
    got = [s * 1000 for s in r.stops if s is not None]
    within = sum(s <= 300 for s in got)
    print(f"{'barge-in stop: speech -> paused/interrupted':<44} n={len(r.stops):<3} p50={percentile(got, 50):.0f}ms "
          f"p95={percentile(got, 95):.0f}ms max={max(got, default=float('nan')):.0f}ms "
          f"within 300 ms: {within}/{len(r.stops)} ({100 * within / max(1, len(r.stops)):.0f} %)")
    print(f"{'  first event':<44} {dict(r.stop_kind)}; questions let pass as backchannels: {r.resumed_questions}")
    tries = [f for v in r.false.values() for f in v]
    print(f"{'false barge-ins (interrupted or answered)':<44} {sum(tries)}/{len(tries)} "
          f"({100 * sum(tries) / max(1, len(tries)):.0f} %): "
          + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(r.false.items())))
    pause = f", paused p50 {percentile(r.pauses, 50):.2f}s" if r.pauses else ""
    print(f"{'  paused the answer first':<44} {r.paused_by_backchannel}/{len(tries)}, "
          f"resumed {len(r.pauses)}{pause}")
    print(f"{'cut-off paused utterances (2 finals/turns)':<44} {sum(r.cut)}/{len(r.cut)} "
          f"({100 * sum(r.cut) / max(1, len(r.cut)):.0f} %)")
    print(f"{'skipped (answer over too soon) / missing':<44} {dict(r.skipped) or 'none'} / {dict(r.missing) or 'none'}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=5, help="turns per mode (rounds of one turn of each kind)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--voicebench", type=int, default=1, metavar="N", help="voicebench sessions (0: none)")
    parser.add_argument("--url", help="the gateway of a running stack (no token) instead of starting one")
    parser.add_argument("--llm-model", default="qwen2.5-0.5b", help="VOICEBUS_LLM_LOCAL_MODEL of the started stack")
    parser.add_argument("--log", help="write every event received, with its time, to this JSON-lines file")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per turn and its trials")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    speaker = Speaker(Path(tempfile.mkdtemp(prefix="voicebus-conversation-")))
    plan = speech_plan(speaker, rng, args.turns)
    warmup = speaker.speech(QUESTIONS[0], "en-us")
    clips = {"question": speaker.speech(QUESTIONS[1], "piper"), "follow-up": speaker.speech(QUESTIONS[2], "en+f3"),
             "barge-in": speaker.speech(LONG_QUESTIONS[0], "en-us"), "okay": speaker.backchannel("okay", "en+f3"),
             "barge-in-2": speaker.speech(LONG_QUESTIONS[1], "piper"), "cough": noise_burst(noise_rng(rng), "cough")}
    stops: list = []
    try:
        base = args.url.rstrip("/") if args.url else None
        if base is None:
            base, stops, _pids = start_stack(args.llm_model, {})
        url = base.replace("http://", "ws://") + "/ws"
        print("load average before: %.2f %.2f %.2f" % os.getloadavg(), f"; gateway {base}; seed {args.seed}",
              flush=True)
        results = await run(url, plan, warmup, args.verbose, args.log)
        print(f"{args.turns} rounds in {results.took:.0f} s (client frames at most {results.late * 1000:.0f} ms late); "
              "load average after: %.2f %.2f %.2f" % os.getloadavg())
        report(results)
        if args.voicebench:
            for text in await voicebench_lines(url, clips, args.voicebench):
                print(text)
            print("load average after voicebench: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        for stop in stops:
            stop()


if __name__ == "__main__":
    asyncio.run(main())
