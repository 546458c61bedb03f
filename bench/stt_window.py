"""STT final decodes in process: time and word errors per encoder window and beam size.

    .venv/bin/python bench/stt_window.py [--rounds 1] [--threads 2]

The same WhisperEngine the service runs (tiny.en, int8) decodes each utterance as a streaming
final would: 0.3 s of audio before the speech, 0.2 s after. Utterances: bench/stt.py's
sentences plus four more, each spoken by three espeak-ng voices, questions twice (flat, and
with the rising voice espeak-ng gives a question mark). Configurations: Whisper's
30 s window and short windows (the speech plus 8 s of silence, at least VOICEBUS_STT_STREAM_
WINDOW_SECONDS), each with beam 5 (the final's default) and greedy decoding. One warm-up round
is not counted. Prints p50/p95 decode time, mean WER and the utterances with any error, and
the load average.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from common import percentile  # sets sys.path

from helpers import word_error_rate
from stt import MORE
from stt_support import SENTENCES

EXTRA = ["What is the capital of France", "I would like to book a table for four people tomorrow",
         "Tell me a joke about cats", "Set a timer for ten minutes"]
VOICES = [("en-us", 170), ("en-gb", 150), ("en-us+f3", 160)]
QUESTION_WORDS = {"what", "how", "who", "where", "is", "when", "why"}
CONFIGS = {"30 s window, beam 5": (30.0, 5), "30 s window, greedy": (30.0, 1),
           "15 s window, beam 5": (15.0, 5), "15 s window, greedy": (15.0, 1), "12 s window, greedy": (12.0, 1)}


def utterances(folder: Path) -> list[tuple[str, np.ndarray]]:
    from faster_whisper.audio import decode_audio

    made = []
    for i, text in enumerate(SENTENCES + MORE + EXTRA):
        # espeak-ng raises the voice at a question mark: questions are spoken as questions too
        spoken = [text, text + "?"] if text.split()[0].lower() in QUESTION_WORDS else [text]
        for (voice, speed), (j, said) in itertools.product(VOICES, enumerate(spoken)):
            path = folder / f"{i}-{j}-{voice}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), said], check=True)
            audio = decode_audio(str(path), 16_000)
            made.append((said, np.concatenate([np.zeros(4800, np.float32), audio, np.zeros(3200, np.float32)])))
    return made


def decode(engine, audio: np.ndarray, min_window: float, beam: int) -> str:  # noqa: ANN001
    window = engine.window_for(audio.size / 16_000, min_window)
    if window is None:
        return engine.transcribe(audio, language="en", beam_size=beam, timestamps=False).text
    return engine.transcribe_window(audio, window=window, language="en", beam_size=beam).text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="counted rounds over every utterance")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from stt_service.engine import WhisperEngine
    from stt_service.settings import SttSettings

    engine = WhisperEngine(SttSettings(stt_cpu_threads=args.threads))
    made = utterances(Path(tempfile.mkdtemp(prefix="voicebus-bench-window-")))
    print(f"{len(made)} utterances ({len(made) // len(VOICES)} texts x {len(VOICES)} voices); "
          f"load average {os.getloadavg()[0]:.2f} at start")
    seconds: dict[str, list[float]] = {name: [] for name in CONFIGS}
    errors: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for round_ in range(args.rounds + 1):
        for text, audio in made:
            for name, (window, beam) in CONFIGS.items():
                started = time.perf_counter()
                heard = decode(engine, audio, window, beam)
                if round_:  # the first round warms up
                    seconds[name].append(time.perf_counter() - started)
                    errors[name].append(word_error_rate(text.rstrip("?"), heard))
    for name in CONFIGS:
        t, e = seconds[name], errors[name]
        q = [e[i] for i in range(len(e)) if made[i % len(made)][0].endswith("?")]
        print(f"  {name:<22} decode p50={percentile(t, 50):.3f}s p95={percentile(t, 95):.3f}s  "
              f"mean WER {statistics.fmean(e):.3f}  with an error {sum(1 for x in e if x > 0)}/{len(e)}  "
              f"rising-voice questions: WER {statistics.fmean(q):.3f}, with an error {sum(1 for x in q if x > 0)}/{len(q)}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
