"""`python -m llm_service`: Streamed answers behind the LanguageModel gRPC service: Groq, or a local GGUF model."""

from __future__ import annotations

import asyncio

from grpc import aio

from llm_service.settings import LlmSettings
from voicebus.grpc_server import run_service, start_process
from voicebus.v1 import llm_pb2, llm_pb2_grpc


def register(server: aio.Server) -> list[str]:
    llm_pb2_grpc.add_LanguageModelServicer_to_server(llm_pb2_grpc.LanguageModelServicer(), server)
    return [llm_pb2.DESCRIPTOR.services_by_name["LanguageModel"].full_name]


def main() -> None:
    settings = LlmSettings()
    start_process(settings)
    asyncio.run(run_service(settings=settings, address=settings.llm_addr, register=register))


if __name__ == "__main__":
    main()
