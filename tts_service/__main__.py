"""`python -m tts_service`: Speech from text behind the TextToSpeech gRPC service: Piper and pyttsx3/espeak-ng."""

from __future__ import annotations

import asyncio

from grpc import aio

from tts_service.settings import TtsSettings
from voicebus.grpc_server import run_service, start_process
from voicebus.v1 import tts_pb2, tts_pb2_grpc


def register(server: aio.Server) -> list[str]:
    tts_pb2_grpc.add_TextToSpeechServicer_to_server(tts_pb2_grpc.TextToSpeechServicer(), server)
    return [tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name]


def main() -> None:
    settings = TtsSettings()
    start_process(settings)
    asyncio.run(run_service(settings=settings, address=settings.tts_addr, register=register))


if __name__ == "__main__":
    main()
