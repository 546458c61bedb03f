"""`python -m tts_service`: speech from text behind the TextToSpeech gRPC service: Piper and pyttsx3/espeak-ng."""

from __future__ import annotations

import asyncio
import logging

from grpc import aio

from tts_service.engines import PIPER, PYTTSX3, SpeechEngine
from tts_service.piper_engine import PiperEngine
from tts_service.pyttsx3_engine import Pyttsx3Engine
from tts_service.server import TextToSpeechServicer, register_servicer
from tts_service.settings import TtsSettings
from tts_service.speaker import Speaker
from voicebus.grpc_server import run_service, start_process

log = logging.getLogger("tts_service")


def build_engines(settings: TtsSettings) -> dict[str, SpeechEngine]:
    """Both engines, loaded once for the life of the process."""
    piper = PiperEngine(settings.tts_piper_voice_dirs, settings.tts_piper_threads)
    pyttsx3 = Pyttsx3Engine(settings.tts_work_dir, settings.tts_pyttsx3_words_per_minute,
                            settings.tts_pyttsx3_timeout_seconds)
    return {PIPER: piper, PYTTSX3: pyttsx3}


def main() -> None:
    settings = TtsSettings()
    start_process(settings)
    engines = build_engines(settings)
    try:
        speaker = Speaker(engines, settings.tts_preferred_engine, settings.tts_pyttsx3_voices)
    except ValueError as exc:
        raise SystemExit(f"tts: {exc}") from None
    # The voice English requests get by default is ready before the service says SERVING.
    english = speaker.default_voice(PIPER, "en")
    if english is not None:
        engines[PIPER].preload(english.name)  # type: ignore[attr-defined]
    servicer = TextToSpeechServicer(speaker, settings)

    def register(server: aio.Server) -> list[str]:
        return list(register_servicer(server, servicer))

    try:
        asyncio.run(run_service(settings=settings, address=settings.tts_addr, register=register,
                                capacity=settings.tts_max_concurrent_requests,
                                capabilities=[e for e in engines if engines[e].voices()]))
    finally:
        for engine in engines.values():
            engine.close()  # the pyttsx3 worker and its folder go, also after a failed start


if __name__ == "__main__":
    main()
