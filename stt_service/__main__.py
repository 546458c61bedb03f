"""`python -m stt_service`: Speech to text: faster-whisper behind the SpeechToText gRPC service."""

from __future__ import annotations

import asyncio

from grpc import aio

from stt_service.settings import SttSettings
from voicebus.grpc_server import run_service, start_process
from voicebus.v1 import stt_pb2, stt_pb2_grpc


def register(server: aio.Server) -> list[str]:
    stt_pb2_grpc.add_SpeechToTextServicer_to_server(stt_pb2_grpc.SpeechToTextServicer(), server)
    return [stt_pb2.DESCRIPTOR.services_by_name["SpeechToText"].full_name]


def main() -> None:
    settings = SttSettings()
    start_process(settings)
    asyncio.run(run_service(settings=settings, address=settings.stt_addr, register=register))


if __name__ == "__main__":
    main()
