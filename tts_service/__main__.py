"""`python -m tts_service`: speech from text behind the TextToSpeech gRPC service: Piper and pyttsx3/espeak-ng."""

from __future__ import annotations

import asyncio

from grpc import aio

from tts_service.engines import PIPER, PYTTSX3, SpeechEngine
from tts_service.piper_engine import PiperEngine
from tts_service.pyttsx3_engine import Pyttsx3Engine
from tts_service.server import TextToSpeechServicer, register_servicer
from tts_service.settings import TtsSettings
from tts_service.speaker import Speaker
from voicebus.grpc_server import run_service, start_process


def main() -> None:
    settings = TtsSettings()
    start_process(settings)
    # Both engines load once, for the life of the process.
    piper = PiperEngine(settings.tts_piper_voice_dirs, settings.tts_piper_threads)
    pyttsx3 = Pyttsx3Engine(settings.tts_work_dir, settings.tts_pyttsx3_words_per_minute,
                            settings.tts_pyttsx3_timeout_seconds)
    engines: dict[str, SpeechEngine] = {PIPER: piper, PYTTSX3: pyttsx3}
    try:
        speaker = Speaker(engines, settings.tts_preferred_engine, settings.tts_pyttsx3_voices)
        # The voice English requests get by default is ready before the service says SERVING.
        if english := speaker.default_voice(PIPER, "en"):
            piper.preload(english.name)
        servicer = TextToSpeechServicer(speaker, settings)

        def register(server: aio.Server) -> list[str]:
            return list(register_servicer(server, servicer))

        asyncio.run(run_service(settings=settings, address=settings.tts_addr, register=register,
                                capacity=settings.tts_max_concurrent_requests,
                                capabilities=[name for name, engine in engines.items() if engine.voices()]))
    except ValueError as exc:  # a setting with a wrong value
        raise SystemExit(f"tts: {exc}") from None
    finally:
        for engine in engines.values():
            engine.close()  # the pyttsx3 worker and its folder go, also after a failed start


if __name__ == "__main__":
    main()
