"""pyttsx3 over espeak-ng, isolated in one worker process.

pyttsx3 keeps global state, is not thread-safe and only hands audio back through a
file. So one child process owns the engine and speaks one sentence at a time, fed by a
single-thread queue in the server: concurrent requests never share a buffer. Each
sentence goes to its own file in a private folder, removed as soon as it is read (and
the folder on close); a worker that errs or hangs is killed and started afresh.

pyttsx3 2.99's espeak driver runs espeak-ng asynchronously: `runAndWait()` may return
before the file is written, and it cancels the sentence it starts when espeak-ng was
busy at an earlier stop (even with a property change: cut or empty audio). So the
worker waits for espeak-ng to be idle before each sentence, clears that stale stop
request, and waits for pyttsx3's own "finished-utterance" notification before it reads
the file (checked over thousands of sentences: no cut or empty audio).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

from tts_service.engines import PYTTSX3, EngineError, Speech, VoiceInfo, normalise_language
from voicebus.audio import pcm16_to_float

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 30.0
# espeak-ng accepts 80-450 words per minute.
MIN_WPM, MAX_WPM = 80, 450


def _worker_main(conn: Connection, work_dir: str, timeout: float) -> None:
    """The child process: owns pyttsx3, answers (job, text, voice, wpm) with PCM16 bytes."""
    sys.stdout = open(os.devnull, "w")  # pyttsx3 prints "Audio saved to ..." for every file
    import pyttsx3
    from pyttsx3.drivers import _espeak  # pyttsx3's binding of libespeak-ng

    def wait_until_idle(limit: float = timeout) -> None:
        deadline = time.monotonic() + limit
        while _espeak.IsPlaying():
            if time.monotonic() > deadline:
                raise TimeoutError("espeak-ng stayed busy")
            time.sleep(0.001)

    engine = pyttsx3.init("espeak")
    finished = threading.Event()
    outcome: dict[str, bool] = {}

    def on_finished(name: object = None, completed: bool = True) -> None:  # espeak's thread
        outcome["completed"] = completed
        finished.set()

    engine.connect("finished-utterance", on_finished)
    driver = engine.proxy._driver
    engine.runAndWait()  # nothing to say: leaves pyttsx3's command queue idle, not "busy"
    wait_until_idle(START_TIMEOUT_SECONDS)
    voices = [(v.id, [str(c) for c in (v.languages or [])], v.gender or "") for v in engine.getProperty("voices")]
    conn.send(("ready", voices))
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the server went away
            return
        if job is None:
            return
        job_id, text, voice, wpm = job
        path = os.path.join(work_dir, f"{job_id}.wav")
        try:
            wait_until_idle()
            engine.setProperty("voice", voice)
            engine.setProperty("rate", wpm)
            wait_until_idle()  # espeak-ng queues property changes: idle again before the sentence
            # A stop request pyttsx3 made while espeak-ng was busy earlier would cancel this sentence.
            driver._stopping = False
            finished.clear()
            engine.save_to_file(text, path)
            engine.runAndWait()
            if not finished.wait(timeout):
                raise TimeoutError("espeak-ng did not finish the sentence")
            if not outcome.get("completed", False):
                raise RuntimeError("espeak-ng cancelled the sentence")
            with wave.open(path, "rb") as wav:
                conn.send(("ok", job_id, wav.readframes(wav.getnframes()), wav.getframerate()))
        except Exception as exc:  # noqa: BLE001 - reported to the server, then this process ends
            conn.send(("error", job_id, f"{exc.__class__.__name__}: {exc}"))
            return  # pyttsx3's loop state may be broken: the server starts a fresh worker
        finally:
            if os.path.exists(path):
                os.remove(path)


class Pyttsx3Engine:
    name = PYTTSX3

    def __init__(self, work_dir: Path | None, words_per_minute: int, timeout_seconds: float) -> None:
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = Path(tempfile.mkdtemp(prefix="voicebus-tts-pyttsx3-", dir=work_dir))
        self.words_per_minute = words_per_minute
        self.timeout_seconds = timeout_seconds
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._jobs = 0
        # One thread: jobs reach the worker one at a time, in the order they were asked.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyttsx3")
        self._voices: list[VoiceInfo] = []
        try:
            self._voices = self._start()
        except EngineError as exc:
            log.error("pyttsx3 is unavailable: %s", exc)

    def voices(self) -> list[VoiceInfo]:
        return list(self._voices)

    def _start(self) -> list[VoiceInfo]:
        parent_conn, child_conn = self._context.Pipe()
        process = self._context.Process(target=_worker_main, name="pyttsx3-worker", daemon=True,
                                        args=(child_conn, str(self.work_dir), self.timeout_seconds))
        process.start()
        child_conn.close()
        self._process, self._conn = process, parent_conn
        if not parent_conn.poll(START_TIMEOUT_SECONDS):
            self._stop_worker()
            raise EngineError(f"the pyttsx3 worker did not start within {START_TIMEOUT_SECONDS:.0f} s")
        try:
            _, raw_voices = parent_conn.recv()
        except EOFError:
            self._stop_worker()
            raise EngineError("the pyttsx3 worker exited at start (is espeak-ng installed?)") from None
        log.info("pyttsx3 worker started", extra={"fields": {"pid": process.pid, "voices": len(raw_voices)}})
        return [VoiceInfo(engine=PYTTSX3, name=voice_id,
                          language_codes=tuple(normalise_language(c) for c in codes if c and c != "Unknown"),
                          natural_sample_rate_hz=22050, gender=gender.lower())
                for voice_id, codes, gender in raw_voices]

    def _stop_worker(self) -> None:
        process, self._process = self._process, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is not None and process.is_alive():
            process.kill()
        if process is not None:
            process.join(5)
        # A killed worker may leave its current file behind.
        for leftover in self.work_dir.glob("*"):
            leftover.unlink(missing_ok=True)

    def _synthesize(self, text: str, voice: str, speaking_rate: float) -> Speech:
        if self._process is None or not self._process.is_alive():
            self._stop_worker()
            self._start()
        assert self._conn is not None
        self._jobs += 1
        wpm = int(min(MAX_WPM, max(MIN_WPM, round(self.words_per_minute * speaking_rate))))
        try:
            self._conn.send((self._jobs, text, voice, wpm))
            if not self._conn.poll(self.timeout_seconds):
                self._stop_worker()
                raise EngineError(f"pyttsx3 took longer than {self.timeout_seconds:g} s; its worker was restarted")
            reply = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._stop_worker()
            raise EngineError(f"the pyttsx3 worker died ({exc.__class__.__name__}); it will be restarted") from None
        if reply[0] != "ok":
            self._stop_worker()
            raise EngineError(f"pyttsx3 failed: {reply[2]}")
        _, _, pcm, rate = reply
        return Speech(pcm16_to_float(pcm), rate)

    async def synthesize(self, text: str, voice: str, speaking_rate: float) -> Speech:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._synthesize, text, voice, speaking_rate)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._conn is not None and self._process is not None and self._process.is_alive():
            try:
                self._conn.send(None)
                self._process.join(5)
            except OSError:
                pass
        self._stop_worker()
        shutil.rmtree(self.work_dir, ignore_errors=True)
