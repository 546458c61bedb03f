"""`python -m orchestrator`: The Assistant gRPC service: conversations in SQLite, the streaming turn pipeline, NATS events."""

from __future__ import annotations

import asyncio

from grpc import aio

from orchestrator.settings import OrchestratorSettings
from voicebus.grpc_server import run_service, start_process
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc


def register(server: aio.Server) -> list[str]:
    assistant_pb2_grpc.add_AssistantServicer_to_server(assistant_pb2_grpc.AssistantServicer(), server)
    return [assistant_pb2.DESCRIPTOR.services_by_name["Assistant"].full_name]


def main() -> None:
    settings = OrchestratorSettings()
    start_process(settings)
    asyncio.run(run_service(settings=settings, address=settings.orchestrator_addr, register=register))


if __name__ == "__main__":
    main()
