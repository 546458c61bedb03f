"""`python -m stt_service`: Speech to text: faster-whisper behind the SpeechToText gRPC service."""

from __future__ import annotations

import asyncio
import logging

from grpc import aio

from stt_service.engine import WhisperEngine
from stt_service.server import SpeechToTextServicer
from stt_service.settings import SttSettings
from voicebus.grpc_server import run_service, start_process
from voicebus.packaged_models import ModelNotInstalled
from voicebus.v1 import stt_pb2, stt_pb2_grpc

log = logging.getLogger("stt_service")


def main() -> None:
    settings = SttSettings()
    start_process(settings)
    try:
        engine = WhisperEngine(settings)
    except ModelNotInstalled as exc:
        log.error("cannot load the speech model: %s", exc)
        raise SystemExit(f"stt: {exc}") from None
    from faster_whisper.vad import get_vad_model

    get_vad_model()  # load Silero now, not in the first stream
    servicer = SpeechToTextServicer(engine, settings)

    def register(server: aio.Server) -> list[str]:
        stt_pb2_grpc.add_SpeechToTextServicer_to_server(servicer, server)
        return [stt_pb2.DESCRIPTOR.services_by_name["SpeechToText"].full_name]

    async def on_shutdown() -> None:
        servicer.jobs.shutdown()

    asyncio.run(run_service(settings=settings, address=settings.stt_addr, register=register,
                            capacity=settings.stt_max_queue + 1, capabilities=[f"model:{engine.name}", "multilingual" if engine.multilingual else "language:en"],
                            on_shutdown=on_shutdown))


if __name__ == "__main__":
    main()
