"""TTS benchmark: the real service (Piper and pyttsx3/espeak-ng) on a free port.

    .venv/bin/python bench/tts.py [--repeats 5] [--concurrency 4]

1. Per engine and encoding, `Synthesize` of one sentence and of a five-sentence paragraph:
   time to first chunk (request sent → first audio message received) and real-time factor
   (whole response time / seconds of audio produced).
2. The engines alone, in this process (Piper voice, pyttsx3 worker): real-time factor
   without gRPC or encoding, to show what the service adds.
3. `StreamingSynthesize` fed like an LLM (3-word deltas): time to first chunk from the
   first delta; the first piece is a clause, so audio starts before the sentence ends.
4. `concurrency` paragraphs at once per engine: wall time and aggregate real-time factor.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from common import NatsServer, ServiceProcess, free_port, percentile, summary  # sets sys.path
from grpc import aio

from voicebus.v1 import audio_pb2, tts_pb2, tts_pb2_grpc

SENTENCE = "We will meet at the train station tomorrow morning."
PARAGRAPH = ("Sure, here is the plan for tomorrow. We will meet at the train station at nine in the morning. "
             "From there we take the express train to the coast, which takes about two hours. "
             "Bring a warm jacket, because the wind near the water can be cold. "
             "If anything changes, I will send you a message tonight.")
ENCODINGS = {"pcm16": audio_pb2.AUDIO_ENCODING_PCM16, "wav": audio_pb2.AUDIO_ENCODING_WAV,
             "mp3": audio_pb2.AUDIO_ENCODING_MP3, "ogg_opus": audio_pb2.AUDIO_ENCODING_OGG_OPUS,
             "webm_opus": audio_pb2.AUDIO_ENCODING_WEBM_OPUS}


async def timed_synthesize(stub, text: str, engine: str, encoding: int) -> tuple[float, float, float]:
    """(seconds to first chunk, seconds in all, seconds of audio)."""
    started = time.perf_counter()
    first, audio = None, 0.0
    call = stub.Synthesize(tts_pb2.SynthesizeRequest(text=text, config=tts_pb2.SynthesisConfig(
        engine=engine, encoding=encoding)), timeout=300)
    async for reply in call:
        first = first if first is not None else time.perf_counter() - started
        audio += reply.sentence.audio.duration_seconds
    return first or 0.0, time.perf_counter() - started, audio


async def timed_stream(stub, text: str, engine: str) -> float:
    words = text.split(" ")
    deltas = [" ".join(words[i:i + 3]) + " " for i in range(0, len(words), 3)]
    call = stub.StreamingSynthesize(timeout=300)
    await call.write(tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.SynthesisConfig(engine=engine)))
    started = time.perf_counter()
    for delta in deltas:
        await call.write(tts_pb2.StreamingSynthesizeRequest(text=delta))
    await call.done_writing()
    first = None
    async for _ in call:
        first = first if first is not None else time.perf_counter() - started
    return first or 0.0


async def service_benchmarks(address: str, repeats: int, concurrency: int) -> None:
    async with aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        for engine in ("piper", "pyttsx3"):
            await timed_synthesize(stub, SENTENCE, engine, ENCODINGS["pcm16"])  # warm-up
        print("\n== Synthesize via gRPC: time to first chunk (TTFC) and real-time factor (RTF)")
        for engine in ("piper", "pyttsx3"):
            for name, encoding in ENCODINGS.items():
                for label, text in (("sentence", SENTENCE), ("paragraph", PARAGRAPH)):
                    runs = [await timed_synthesize(stub, text, engine, encoding) for _ in range(repeats)]
                    ttfc = [r[0] for r in runs]
                    rtf = [r[1] / r[2] for r in runs]
                    print(f"{engine:<8} {name:<10} {label:<10} audio={runs[0][2]:5.2f}s  "
                          f"TTFC p50={percentile(ttfc, 50) * 1000:6.1f}ms p95={percentile(ttfc, 95) * 1000:6.1f}ms  "
                          f"RTF p50={percentile(rtf, 50):.3f}")

        print("\n== StreamingSynthesize fed in 3-word deltas: first delta → first audio")
        for engine in ("piper", "pyttsx3"):
            values = [await timed_stream(stub, PARAGRAPH, engine) for _ in range(repeats)]
            print(summary(f"{engine} streaming TTFC", values))

        print(f"\n== {concurrency} paragraphs at once (PCM16)")
        for engine in ("piper", "pyttsx3"):
            started = time.perf_counter()
            runs = await asyncio.gather(*(timed_synthesize(stub, PARAGRAPH, engine, ENCODINGS["pcm16"])
                                          for _ in range(concurrency)))
            wall = time.perf_counter() - started
            audio = sum(r[2] for r in runs)
            print(f"{engine:<8} wall={wall:.2f}s for {audio:.1f}s of audio: aggregate RTF={wall / audio:.3f}; "
                  f"TTFC p50={percentile([r[0] for r in runs], 50) * 1000:.0f}ms "
                  f"max={max(r[0] for r in runs) * 1000:.0f}ms")


def engine_benchmarks(repeats: int) -> None:
    """The engines without the service: what synthesis alone costs."""
    from tts_service.piper_engine import PiperEngine
    from tts_service.pyttsx3_engine import Pyttsx3Engine
    from voicebus.text import split_sentences

    piper = PiperEngine([], threads=1)
    pyttsx3 = Pyttsx3Engine(Path(tempfile.gettempdir()), 175, 30)
    print("\n== Engines in this process, paragraph sentence by sentence (no gRPC, no encoding)")
    try:
        for name, engine, voice in (("piper", piper, "en_US-joe-medium"), ("pyttsx3", pyttsx3, "gmw/en-us")):
            engine._synthesize(SENTENCE, voice, 1.0)  # loads the voice
            rtf = []
            for _ in range(repeats):
                started, audio = time.perf_counter(), 0.0
                for sentence in split_sentences(PARAGRAPH):
                    audio += engine._synthesize(sentence, voice, 1.0).duration
                rtf.append((time.perf_counter() - started) / audio)
            print(f"{name:<8} RTF p50={statistics.median(rtf):.3f} (audio {audio:.2f}s)")
    finally:
        piper.close()
        pyttsx3.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    nats = NatsServer()
    address = f"127.0.0.1:{free_port()}"
    service = ServiceProcess("tts_service", address, {"VOICEBUS_TTS_ADDR": address, "VOICEBUS_NATS_URL": nats.url},
                             name="bench-tts")
    try:
        service.wait_healthy(120)
        asyncio.run(service_benchmarks(address, args.repeats, args.concurrency))
    finally:
        service.stop()
        nats.stop()
    engine_benchmarks(args.repeats)
    print("\n(2 CPU cores shared with other work: treat figures as indicative.)")


if __name__ == "__main__":
    main()
