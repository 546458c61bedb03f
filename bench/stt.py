"""STT benchmark: the real service (tiny.en, int8) on a free port, speech made by espeak-ng.

    .venv/bin/python bench/stt.py [--utterances 20] [--pace 1.0] [--chunk-ms 50]

1. Real-time factor (processing time / audio duration) of `Transcribe` through the
   service vs faster-whisper called in this process on the same WAV bytes with the same
   settings (beam 5, VAD filter, timestamps), and the ratio of the two.
2. Streaming, end of speech → final, over N utterances streamed as PCM16 at `pace` x real
   time in `chunk-ms` pieces (pace 1.0 = as a microphone delivers them):
   - open mic: speech then 1 s of silence, the stream stays open; the final comes from the
     VAD's end of utterance (500 ms of silence by default, included in the figure);
   - push-to-talk: the client half-closes right after the speech (button released).
   "End of speech" is when the client sent the piece holding the last speech sample
   (found from the waveform itself, not from the service).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from common import NatsServer, ServiceProcess, free_port, summary  # sets sys.path

from helpers import word_error_rate
from stt_support import SENTENCES, pcm16, pcm_config, run_stream, silence, speech, split
from voicebus.v1 import stt_pb2, stt_pb2_grpc

MORE = [
    "Turn off the television in the bedroom",
    "How do I make a cup of green tea",
    "Who wrote the novel about the white whale",
    "Add milk and bread to my shopping list",
    "Is it going to rain this afternoon",
    "Send a message to my brother saying I am late",
    "What is the capital city of Australia",
    "Read me the latest news about science",
    "How many minutes are there in a day",
    "Open the garage door please",
    "Tell me something interesting about octopuses",
    "Where is the nearest pharmacy",
    "Translate good morning into French",
]


def speech_end(samples: np.ndarray) -> int:
    """Index after the last sample louder than 2 % of the peak (espeak pads with silence)."""
    loud = np.flatnonzero(np.abs(samples) > 0.02 * float(np.max(np.abs(samples))))
    return int(loud[-1]) + 1 if loud.size else samples.size


def rtf(stub: stt_pb2_grpc.SpeechToTextStub, clips: list[tuple[str, bytes]], model_dir: Path, threads: int) -> None:
    from faster_whisper import WhisperModel

    from voicebus.audio import decode_audio

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads, local_files_only=True)
    print(f"\n== Real-time factor: Transcribe via gRPC vs faster-whisper in-process ({threads} threads)")
    for name, wav in clips:
        service, local, duration = [], [], 0.0
        for _ in range(3):
            started = time.perf_counter()
            reply = stub.Transcribe(stt_pb2.TranscribeRequest(audio=wav), timeout=300)
            service.append(time.perf_counter() - started)
            duration = reply.audio_duration_seconds
            started = time.perf_counter()
            segments, _ = model.transcribe(decode_audio(wav), language="en", beam_size=5, vad_filter=True,
                                           vad_parameters={"min_silence_duration_ms": 1000})
            list(segments)
            local.append(time.perf_counter() - started)
        s, lo = statistics.median(service), statistics.median(local)
        print(f"{name:<26} audio={duration:6.2f}s  service RTF={s / duration:.3f}  in-process RTF={lo / duration:.3f}"
              f"  ratio={s / lo:.2f}  (median of 3; service {s:.3f}s, in-process {lo:.3f}s)")


def streaming(stub: stt_pb2_grpc.SpeechToTextStub, utterances: list[tuple[str, np.ndarray]],
              pace: float, chunk_ms: int, interims: bool = True) -> None:
    chunk = int(16_000 * chunk_ms / 1000) * 2
    interval = chunk_ms / 1000 / pace
    print(f"\n== Streaming: PCM16 16 kHz in {chunk_ms} ms pieces at {pace:g}x real time, {len(utterances)} utterances, "
          f"interim results {'on' if interims else 'off'}")
    open_mic: dict[str, list[float]] = {"end of speech -> final": [], "END_OF_UTTERANCE -> final": [],
                                        "latency_seconds (server)": [], "interims per utterance": []}
    ptt: dict[str, list[float]] = {"half-close -> final": [], "end of speech -> final": [],
                                   "latency_seconds (server)": []}
    wers: list[float] = []
    for text, samples in utterances:
        lead = silence(0.3)
        end = lead.size + speech_end(samples)
        audio = np.concatenate([lead, samples[: speech_end(samples)], silence(1.0)])
        run = run_stream(stub, pcm_config(interim_results=interims), split(pcm16(audio), chunk), interval=interval,
                         hold_until=lambda r: bool(r.finals()))
        final_at, final = run.first_time("final"), run.finals()[0]
        sent = run.sent_at[min(len(run.sent_at) - 1, end * 2 // chunk)]
        open_mic["end of speech -> final"].append(final_at - sent)
        open_mic["END_OF_UTTERANCE -> final"].append(final_at - run.first_time("end"))
        open_mic["latency_seconds (server)"].append(final.latency_seconds)
        open_mic["interims per utterance"].append(len(run.interims()))
        wers.append(word_error_rate(text, final.transcript.text))

        audio = np.concatenate([lead, samples[: speech_end(samples)]])
        run = run_stream(stub, pcm_config(interim_results=interims), split(pcm16(audio), chunk), interval=interval)
        final_at, final = run.first_time("final"), run.finals()[0]
        assert run.half_closed_at is not None
        ptt["half-close -> final"].append(final_at - run.half_closed_at)
        ptt["end of speech -> final"].append(final_at - run.sent_at[-1])
        ptt["latency_seconds (server)"].append(final.latency_seconds)
        wers.append(word_error_rate(text, final.transcript.text))
    print("open mic (VAD end of utterance, 500 ms silence):")
    for name, values in open_mic.items():
        print("  " + summary(name, values, "" if name.startswith("interims") else "s"))
    print("push-to-talk (half-close right after speech):")
    for name, values in ptt.items():
        print("  " + summary(name, values))
    print(f"streaming finals: mean WER {statistics.fmean(wers):.3f} over {len(wers)} finals")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--pace", type=float, default=1.0, help="streaming speed, x real time")
    parser.add_argument("--chunk-ms", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-rtf", action="store_true")
    parser.add_argument("--interims", choices=["on", "off", "both"], default="both")
    parser.add_argument("--env", action="append", default=[], help="extra VOICEBUS_X=Y for the service")
    args = parser.parse_args()

    from stt_service.models import tiny_en_dir

    folder = Path(tempfile.mkdtemp(prefix="voicebus-bench-stt-"))
    texts = (SENTENCES + MORE) * (1 + args.utterances // len(SENTENCES + MORE))
    made = [speech(t, folder, f"u{i}") for i, t in enumerate(texts[: max(args.utterances, 5)])]
    long_audio = np.concatenate([np.concatenate([s, silence(0.5)]) for _, s in made[:20]])
    from voicebus.audio import wav_bytes

    clips = [(f"short: {texts[i][:18]}…", made[i][0]) for i in range(3)]
    clips.append((f"long: {len(made[:20])} sentences", wav_bytes(pcm16(long_audio), 16_000)))

    nats = NatsServer()
    address = f"127.0.0.1:{free_port()}"
    service = ServiceProcess("stt_service", address, {
        "VOICEBUS_STT_ADDR": address, "VOICEBUS_NATS_URL": nats.url, "VOICEBUS_DATA_DIR": str(folder),
        "VOICEBUS_STT_CPU_THREADS": str(args.threads), "VOICEBUS_LOG_LEVEL": "WARNING",
        **dict(e.split("=", 1) for e in args.env)}, name="bench-stt")
    try:
        service.wait_healthy()
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start "
              "(other work on the machine makes these numbers noisy)")
        with grpc.insecure_channel(address) as channel:
            stub = stt_pb2_grpc.SpeechToTextStub(channel)
            stub.Transcribe(stt_pb2.TranscribeRequest(audio=made[0][0]), timeout=60)  # warm-up
            if not args.skip_rtf:
                rtf(stub, clips, tiny_en_dir(), args.threads)
            for interims in {"on": [True], "off": [False], "both": [True, False]}[args.interims]:
                streaming(stub, [(texts[i], made[i][1]) for i in range(args.utterances)], args.pace, args.chunk_ms,
                          interims)
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    finally:
        service.stop()
        nats.stop()


if __name__ == "__main__":
    sys.exit(main())
