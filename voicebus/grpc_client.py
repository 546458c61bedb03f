"""gRPC channels between services: auth token, trace propagation, message sizes, TLS."""

from __future__ import annotations

import grpc
from grpc import aio

from voicebus.auth import bearer_client_interceptors
from voicebus.config import CommonSettings
from voicebus.grpc_reconnect import RECONNECT_OPTIONS, ReconnectWait, reconnect_interceptors
from voicebus import grpc_write_race
from voicebus.grpc_server import grpc_options
from voicebus.telemetry import grpc_client_interceptors

grpc_write_race.install()


def channel_credentials(settings: CommonSettings) -> grpc.ChannelCredentials | None:
    """TLS when VOICEBUS_TLS_CA or _CERT is set: servers are checked against the CA (or the
    system's), and our own certificate goes along for servers that require one."""
    if not (settings.tls_ca or settings.tls_cert):
        return None
    ca = settings.tls_ca.read_bytes() if settings.tls_ca else None
    if settings.tls_cert and settings.tls_key:
        return grpc.ssl_channel_credentials(ca, settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
    return grpc.ssl_channel_credentials(ca)


def open_channel(address: str, settings: CommonSettings) -> aio.Channel:
    # A call waits for a reconnect in progress (voicebus.grpc_reconnect), inside its span.
    reconnect = ReconnectWait()
    interceptors = [*grpc_client_interceptors(), *reconnect_interceptors(reconnect)]
    if token := settings.token():
        interceptors.extend(bearer_client_interceptors(token))
    options = [*grpc_options(settings), ("grpc.keepalive_time_ms", 10_000),
               ("grpc.keepalive_timeout_ms", 5_000), ("grpc.keepalive_permit_without_calls", 1), *RECONNECT_OPTIONS]
    if credentials := channel_credentials(settings):
        channel = aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
    else:
        channel = aio.insecure_channel(address, options=options, interceptors=interceptors)
    reconnect.channel = channel
    return channel
