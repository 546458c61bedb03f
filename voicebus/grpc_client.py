"""gRPC channels between services: auth token, trace propagation, message sizes."""

from __future__ import annotations

from grpc import aio

from voicebus.auth import bearer_client_interceptors
from voicebus.config import CommonSettings
from voicebus.grpc_reconnect import RECONNECT_OPTIONS, ReconnectWait, reconnect_interceptors
from voicebus.grpc_server import grpc_options
from voicebus.telemetry import grpc_client_interceptors


def open_channel(address: str, settings: CommonSettings) -> aio.Channel:
    # A call waits for a reconnect in progress (voicebus.grpc_reconnect), inside its span.
    reconnect = ReconnectWait()
    interceptors = [*grpc_client_interceptors(), *reconnect_interceptors(reconnect)]
    if token := settings.token():
        interceptors.extend(bearer_client_interceptors(token))
    options = [*grpc_options(settings), ("grpc.keepalive_time_ms", 10_000),
               ("grpc.keepalive_timeout_ms", 5_000), ("grpc.keepalive_permit_without_calls", 1), *RECONNECT_OPTIONS]
    channel = aio.insecure_channel(address, options=options, interceptors=interceptors)
    reconnect.channel = channel
    return channel
