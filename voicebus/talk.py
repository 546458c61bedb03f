"""`voicebus talk`: one turn with the Assistant from the command line, over gRPC.

Uses `Converse`, so the answer is printed as the LLM writes it. The answer's speech is
saved as a WAV file (or played with --play). The address is VOICEBUS_ORCHESTRATOR_ADDR
and the token VOICEBUS_AUTH_TOKEN, like every other Voicebus client.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from voicebus.audio import AudioError, decode_container, float_to_pcm16, pcm16_to_float, resample, wav_bytes
from voicebus.config import CommonSettings
from voicebus.grpc_client import open_channel
from voicebus.names import label
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc, audio_pb2

AUDIO_CHUNK_BYTES = 32 * 1024
# Players tried in order for --play; each takes a WAV file as its last argument.
PLAYERS = (["aplay", "-q"], ["paplay"], ["ffplay", "-nodisp", "-autoexit", "-loglevel", "quiet"], ["play", "-q"])


class TalkError(Exception):
    """Something the user must fix; printed as one line, without a traceback."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", help="a typed question")
    given.add_argument("--audio", type=Path, metavar="FILE", help="a recording (WAV, Ogg, FLAC, MP3, WebM)")
    parser.add_argument("--conversation", default="", metavar="ID", help="continue this conversation")
    parser.add_argument("--language", default="", metavar="CODE", help="language hint, e.g. en or hi")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="where to save the spoken answer (default answer.wav, unless --play)")
    parser.add_argument("--play", action="store_true", help="play the answer (aplay, paplay, ffplay or sox)")
    parser.add_argument("--addr", help="orchestrator address (default VOICEBUS_ORCHESTRATOR_ADDR)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the whole turn")


@dataclass
class TurnResult:
    conversation_id: str = ""
    transcript: str = ""
    answer: list[str] = field(default_factory=list)
    audio: list[audio_pb2.AudioChunk] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    turn: assistant_pb2.Turn | None = None
    error: str = ""


def read_audio(path: Path) -> bytes:
    if not path.exists():
        raise TalkError(f"no such file: {path}")
    if not path.is_file():
        raise TalkError(f"{path} is not a file")
    data = path.read_bytes()
    try:
        # Checked here so that a wrong file gets a clear answer before any network call.
        decode_container(data)
    except AudioError as exc:
        raise TalkError(f"{path} is not usable audio: {exc}") from None
    return data


async def requests(args: argparse.Namespace, audio: bytes | None, opened: asyncio.Event,
                   turn_over: asyncio.Event) -> AsyncIterator[assistant_pb2.ConverseRequest]:
    options = assistant_pb2.TurnOptions(
        language_code=args.language, synthesize_audio=True,
        output_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16))
    yield assistant_pb2.ConverseRequest(config=assistant_pb2.ConverseConfig(
        conversation_id=args.conversation, options=options))
    # Nothing more until the server accepted the config: a refused config (unknown
    # conversation) ends the stream, and a write racing that end would hide its status.
    await opened.wait()
    if turn_over.is_set():
        return
    if audio is None:
        yield assistant_pb2.ConverseRequest(text=args.text)
    else:
        for start in range(0, len(audio), AUDIO_CHUNK_BYTES):
            yield assistant_pb2.ConverseRequest(audio=audio[start:start + AUDIO_CHUNK_BYTES])
        yield assistant_pb2.ConverseRequest(end_of_audio=assistant_pb2.EndOfAudio())
    # Half-closing ends the conversation stream, so it waits until the turn is over.
    await turn_over.wait()


def show(text: str, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


async def converse(args: argparse.Namespace, settings: CommonSettings, audio: bytes | None) -> TurnResult:
    result = TurnResult()
    opened, turn_over = asyncio.Event(), asyncio.Event()
    answering = False
    async with open_channel(args.addr or settings.orchestrator_addr, settings) as channel:
        call = assistant_pb2_grpc.AssistantStub(channel).Converse(
            requests(args, audio, opened, turn_over), timeout=args.timeout)
        try:
            async for event in call:
                answering = handle(event, result, answering)
                if event.WhichOneof("event") == "conversation_opened":
                    opened.set()
                if result.turn is not None or result.error:
                    turn_over.set()
        finally:
            turn_over.set()
            opened.set()
    if answering:
        show("")
    return result


def handle(event: assistant_pb2.ConverseResponse, result: TurnResult, answering: bool) -> bool:
    """Record and print one event; returns whether the answer line has been started."""
    result.conversation_id = event.conversation_id or result.conversation_id
    kind = event.WhichOneof("event")
    if kind == "transcript" and event.transcript.is_final:
        result.transcript = event.transcript.text
        show(f"you: {result.transcript or '(nothing heard)'}")
    elif kind == "response_delta":
        if not answering:
            show("assistant: ", end="")
            answering = True
        result.answer.append(event.response_delta.text)
        show(event.response_delta.text.replace("\n", " "), end="")  # one line per label
    elif kind == "audio":
        result.audio.append(event.audio.chunk)
    elif kind == "degraded":
        result.degraded.append(event.degraded.message)
    elif kind in ("turn_completed", "turn_interrupted"):
        result.turn = getattr(event, kind).turn
    elif kind == "turn_failed":
        result.turn = event.turn_failed.turn
        result.error = event.turn_failed.message or "the turn failed"
    elif kind == "error":
        result.error = event.error.message or "the server reported an error"
    return answering


def answer_wav(chunks: list[audio_pb2.AudioChunk]) -> bytes:
    """The answer's PCM16 chunks as one WAV (container chunks are concatenated as sent)."""
    pcm = [c for c in chunks if c.format.encoding in (audio_pb2.AUDIO_ENCODING_PCM16,
                                                        audio_pb2.AUDIO_ENCODING_UNSPECIFIED)]
    if len(pcm) != len(chunks):
        return b"".join(c.data for c in chunks)
    rate = next((c.format.sample_rate_hz for c in pcm if c.format.sample_rate_hz), 0)
    if not rate:
        raise TalkError("the server sent PCM16 audio without a sample rate")
    # Sentences could come from different voices; bring every chunk to the first rate.
    samples = [resample(pcm16_to_float(c.data), c.format.sample_rate_hz or rate, rate) for c in pcm]
    return wav_bytes(float_to_pcm16(np.concatenate(samples)), rate)


def play(path: Path) -> None:
    for player in PLAYERS:
        if shutil.which(player[0]):
            done = subprocess.run([*player, str(path)], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                raise TalkError(f"{player[0]} could not play the answer: {last}")
            return
    raise TalkError("no audio player found (aplay, paplay, ffplay or sox's play); use --out FILE")


def report(args: argparse.Namespace, result: TurnResult) -> int:
    turn = result.turn
    if not result.transcript and args.text is None and turn and turn.user_text:
        show(f"you: {turn.user_text}")
    if not result.answer and turn and turn.assistant_text:
        show(f"assistant: {' '.join(turn.assistant_text.split())}")
    for message in result.degraded:
        show(f"degraded: {message}")
    outcome = label(assistant_pb2.TurnOutcome, turn.outcome) if turn else "failed"
    if outcome != "completed":
        show(f"outcome: {outcome}" + (f" ({result.error})" if result.error else ""))
    show(f"conversation: {result.conversation_id}")

    if result.audio:
        wav = answer_wav(result.audio)
        out = args.out or (None if args.play else Path("answer.wav"))
        if out:
            out.write_bytes(wav)
            show(f"audio: {out}")
        if args.play:
            with tempfile.TemporaryDirectory(prefix="voicebus-talk-") as folder:
                target = out or Path(folder) / "answer.wav"
                target.write_bytes(wav)
                play(target)
    elif turn is not None:
        show("audio: none (the answer has no speech)")
    return 0 if outcome in ("completed", "no_speech") and not result.error else 1


def run(args: argparse.Namespace) -> int:
    settings = CommonSettings()
    address = args.addr or settings.orchestrator_addr
    try:
        audio = read_audio(args.audio) if args.audio is not None else None
        result = asyncio.run(converse(args, settings, audio))
        return report(args, result)
    except TalkError as exc:
        print(f"voicebus talk: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        details = (exc.details() or "").splitlines()[0] if exc.details() else ""
        hint = f" (is the orchestrator running at {address}?)" if exc.code() == grpc.StatusCode.UNAVAILABLE else ""
        print(f"voicebus talk: {exc.code().name}: {details}{hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"voicebus talk: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
