"""Continuous traffic for tests/local_cluster.py: clients that ask, wait (bounded), and retry.

Each client keeps one conversation and asks its questions one after another until told to
stop, then finishes the question it is on. Every try of a question is an `Attempt` with the
way it ended:

- `completed` / `no_speech` / `failed` / `interrupted`: the turn's own end event (or the REST
  turn's outcome);
- `lost`: the gateway moved the stream to another orchestrator while the turn ran (the
  `reconnected` event, its message saying so);
- `refused`: a non-fatal `error` event before the turn started (e.g. 409 `aborted` while a dead
  holder's lease lasts), or an HTTP error status with its JSON error;
- `error`: a fatal `error` event (the stream ended; the client sends `start` again);
- `timeout`: nothing ended it within TURN_TIMEOUT_SECONDS, i.e. a hang;
- `broken`: the WebSocket or HTTP connection to the gateway failed (the gateway is never killed).

A question that did not complete is asked again after a short pause, up to MAX_ATTEMPTS
tries. Typed WebSocket clients keep their socket across orchestrator moves; spoken ones (PCM16
from espeak-ng, at real time, then `end_of_audio`) open a new socket on the same conversation
after a try that did not complete, so that the rest of a cut recording cannot start a stray
turn; the REST client posts /api/chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from gateway_stack import wav_pcm
from helpers import espeak_wav
from local_cluster import AUTH, LocalCluster

TURN_TIMEOUT_SECONDS = 90.0  # a turn under kills on 2 loaded cores: slow is fine, a hang is not
MAX_ATTEMPTS = 8
RETRY_PAUSE_SECONDS = 0.5  # times the attempt number
TURN_ENDS = ("turn_completed", "turn_failed", "turn_interrupted")
TYPED_QUESTIONS = ["What is the capital of France?", "What do bees make?", "How many legs does a spider have?",
                   "What is the largest ocean on Earth?", "Who wrote Romeo and Juliet?", "What colour is the sky?"]
SPOKEN_QUESTIONS = ["What is the capital of France?", "How many days are in a week?", "What do cows drink?"]


@dataclass
class Attempt:
    client: str
    kind: str  # typed / spoken / rest
    question: str
    asked: int  # which of the client's questions (0, 1, …)
    number: int  # which try of it (1 = the first)
    started: float  # when the try began (time.monotonic)
    input_sent: float = 0.0  # when its input was all sent: the text, or the last audio and end_of_audio
    ended: float = 0.0
    outcome: str = "timeout"
    detail: str = ""  # the error's status, code and message, or the failed turn's
    conversation_id: str = ""
    turn_id: str = ""
    user_text: str = ""
    answer: str = ""
    index: int = -1

    @property
    def latency(self) -> float:
        """From the end of the user's input to the end of the turn."""
        return self.ended - (self.input_sent or self.started)


@dataclass
class Traffic:
    attempts: list[Attempt] = field(default_factory=list)
    moves: list[dict[str, Any]] = field(default_factory=list)  # `reconnected` events, with `client`
    marks: list[tuple[str, float]] = field(default_factory=list)  # (what happened, when)
    clock_offset: float = field(default_factory=lambda: time.time() - time.monotonic())  # monotonic -> wall

    def mark(self, what: str) -> None:
        self.marks.append((what, time.monotonic()))

    def completed(self) -> list[Attempt]:
        return [a for a in self.attempts if a.outcome == "completed"]


class Client:
    kind = ""

    def __init__(self, name: str, cluster: LocalCluster, traffic: Traffic, questions: list[str]) -> None:
        self.name, self.cluster, self.traffic, self.questions = name, cluster, traffic, questions
        self.conversation_id = ""
        self.in_turn = asyncio.Event()  # set while a turn of this client runs (for timing a kill)
        self.asked = 0

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.ask(self.questions[self.asked % len(self.questions)])
                self.asked += 1
        finally:
            await self.close()

    async def ask(self, question: str) -> None:
        for number in range(1, MAX_ATTEMPTS + 1):
            attempt = Attempt(self.name, self.kind, question, self.asked, number, time.monotonic())
            self.traffic.attempts.append(attempt)
            try:
                await asyncio.wait_for(self.attempt(attempt), TURN_TIMEOUT_SECONDS)
            except asyncio.TimeoutError:
                attempt.outcome, attempt.detail = "timeout", f"no end within {TURN_TIMEOUT_SECONDS:g} s"
            except (websockets.ConnectionClosed, httpx.HTTPError, OSError) as exc:
                attempt.outcome, attempt.detail = "broken", f"{type(exc).__name__}: {exc}"
            finally:
                self.in_turn.clear()
                attempt.ended = time.monotonic()
            if attempt.outcome == "completed":
                return
            await self.recover(attempt)
            await asyncio.sleep(RETRY_PAUSE_SECONDS * number)

    async def attempt(self, attempt: Attempt) -> None:
        raise NotImplementedError

    async def recover(self, attempt: Attempt) -> None:
        """After a try that did not complete: what this kind of client does before the next."""

    async def close(self) -> None:
        pass


class WsClient(Client):
    """A conversation over /ws: typed (`speech` None) or spoken questions."""

    def __init__(self, name: str, cluster: LocalCluster, traffic: Traffic, questions: list[str],
                 speech: dict[str, tuple[bytes, int]] | None = None, synthesize_audio: bool = False) -> None:
        super().__init__(name, cluster, traffic, questions)
        self.kind = "spoken" if speech else "typed"
        self.speech, self.synthesize_audio = speech, synthesize_audio
        self.ws: Any = None
        self.opened: dict[str, Any] = {}  # the last conversation_opened

    async def open(self) -> None:
        """A socket (if none) and a stream on this client's conversation (a new one at first)."""
        if self.ws is None:
            self.ws = await websockets.connect(self.cluster.ws_url, max_size=None, open_timeout=30,
                                               ping_interval=None)
        start: dict[str, Any] = {"type": "start", "synthesize_audio": self.synthesize_audio,
                                 "output_format": "pcm16"}
        if self.conversation_id:
            start["conversation_id"] = self.conversation_id
        if self.speech:
            start |= {"format": "pcm16", "sample_rate": next(iter(self.speech.values()))[1]}
        await self.ws.send(json.dumps(start))
        while True:
            event = await self.event()
            if event["type"] == "conversation_opened":
                self.conversation_id, self.opened = event["conversation_id"], event
                return
            if event["type"] == "error":
                raise ConnectionError(f"start refused: {event}")

    async def event(self) -> dict[str, Any]:
        while isinstance(message := await self.ws.recv(), bytes):
            pass  # the audio bytes announced by the `audio` event before them
        return json.loads(message)

    async def attempt(self, attempt: Attempt) -> None:
        if self.ws is None or not self.opened:
            try:
                await self.open()
            except (ConnectionError, OSError, websockets.WebSocketException) as exc:
                attempt.outcome, attempt.detail = "refused", f"could not open the stream: {exc}"
                return
        attempt.conversation_id = self.conversation_id
        sender = asyncio.create_task(self.send_input(attempt))
        try:
            await self.read_turn(attempt)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await sender

    async def send_input(self, attempt: Attempt) -> None:
        if self.speech is None:
            await self.ws.send(json.dumps({"type": "text", "text": attempt.question}))
            attempt.input_sent = time.monotonic()
            return
        pcm, rate = self.speech[attempt.question]
        step = rate // 50 * 2  # 20 ms frames, as a microphone sends them
        for i in range(0, len(pcm), step):
            await self.ws.send(pcm[i:i + step])
            await asyncio.sleep(0.02)
        await self.ws.send(json.dumps({"type": "end_of_audio"}))
        attempt.input_sent = time.monotonic()

    async def read_turn(self, attempt: Attempt) -> None:
        while True:
            event = await self.event()
            kind = event["type"]
            if kind == "turn_started":
                attempt.turn_id = event["turn_id"]
                self.in_turn.set()
            elif kind in TURN_ENDS and event.get("turn_id") == attempt.turn_id:
                turn = event["turn"]
                attempt.outcome = turn["outcome"] if kind == "turn_completed" else kind.removeprefix("turn_")
                attempt.user_text, attempt.answer, attempt.index = turn["user_text"], turn["assistant_text"], turn["index"]
                attempt.conversation_id = turn["conversation_id"]
                if kind == "turn_failed":
                    attempt.detail = f"{event.get('stage')}: {event.get('message')}"
                return
            elif kind == "reconnected":
                self.traffic.moves.append({**event, "client": self.name, "at": time.monotonic()})
                self.conversation_id = event["conversation_id"]  # a new one when the first turn was never stored
                attempt.outcome, attempt.detail = "lost", event["message"]
                return
            elif kind == "error" and (event.get("fatal") or not attempt.turn_id):
                attempt.outcome = "error" if event.get("fatal") else "refused"
                attempt.detail = f"{event['status']} {event['code']}: {event['message']}"
                if event.get("fatal"):
                    self.opened = {}  # the stream ended: `start` again
                return
            # Anything else (transcripts, deltas, audio, a notice during the turn) goes on.

    async def recover(self, attempt: Attempt) -> None:
        if self.speech is not None or attempt.outcome in ("timeout", "broken"):
            await self.close()  # a new socket: nothing of the cut recording follows the retry

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        self.ws, self.opened = None, {}


class RestClient(Client):
    kind = "rest"

    async def attempt(self, attempt: Attempt) -> None:
        body: dict[str, Any] = {"text": attempt.question, "synthesize_audio": False}
        if self.conversation_id:
            body["conversation_id"] = self.conversation_id
        async with httpx.AsyncClient(base_url=self.cluster.base, headers=AUTH, timeout=TURN_TIMEOUT_SECONDS) as http:
            self.in_turn.set()
            attempt.input_sent = time.monotonic()
            reply = await http.post("/api/chat", json=body)
        if reply.status_code != 200:
            try:
                error = reply.json()["error"]
                attempt.detail = f"{reply.status_code} {error['code']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                attempt.detail = ""  # not the gateway's JSON error: an unclear ending
            attempt.outcome = "refused"
            return
        turn = reply.json()
        self.conversation_id = attempt.conversation_id = turn["conversation_id"]
        attempt.outcome, attempt.turn_id = turn["outcome"], turn["turn_id"]
        attempt.user_text, attempt.answer = turn.get("transcript") or attempt.question, turn["response"]


def spoken_questions(folder: Path) -> dict[str, tuple[bytes, int]]:
    """PCM16 and its rate for each of SPOKEN_QUESTIONS, made by espeak-ng."""
    return {q: wav_pcm(espeak_wav(q, folder / f"spoken{i}.wav", speed=170))
            for i, q in enumerate(SPOKEN_QUESTIONS)}


def clients(cluster: LocalCluster, traffic: Traffic, folder: Path) -> dict[str, Client]:
    """The standard mix: `memory` (typed, the conversation followed across orchestrators), another
    typed one with audio answers (TTS), two spoken ones and a REST one."""
    speech = spoken_questions(folder)
    return {
        "memory": WsClient("memory", cluster, traffic, TYPED_QUESTIONS),
        "typed": WsClient("typed", cluster, traffic, TYPED_QUESTIONS[::-1], synthesize_audio=True),
        "spoken-1": WsClient("spoken-1", cluster, traffic, SPOKEN_QUESTIONS, speech=speech),
        "spoken-2": WsClient("spoken-2", cluster, traffic, SPOKEN_QUESTIONS[::-1], speech=speech),
        "rest": RestClient("rest", cluster, traffic, TYPED_QUESTIONS[2:] + TYPED_QUESTIONS[:2]),
    }
