"""One way to run a Voicebus gRPC service: health, reflection, auth, TLS, telemetry,
load tracking, NATS heartbeats and graceful shutdown on SIGTERM/SIGINT.

A service's `__main__` builds its engine once and calls `run_service(...)` with a
function that registers its servicers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import SecretStr

from voicebus.auth import BearerAuthServerInterceptor
from voicebus.bus import EventBus
from voicebus.config import CommonSettings
from voicebus.logs import request_id_var, setup_logging
from voicebus.metrics import IN_FLIGHT, serve_metrics
from voicebus.telemetry import grpc_server_interceptors, setup_telemetry, span_forwarder

log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

Register = Callable[[aio.Server], Iterable[str]]


def announced_address(bind_address: str, announce_host: str | None) -> str:
    """The address put in heartbeats: one that other machines or containers can dial.

    A wildcard bind (0.0.0.0, [::]) is not dialable from elsewhere, so it becomes this
    machine's host name (in docker compose: the container's, which the network resolves).
    """
    host, _, port = bind_address.rpartition(":")
    if announce_host:
        return f"{announce_host}:{port}"
    if host in ("", "0.0.0.0", "[::]", "::"):
        return f"{socket.gethostname()}:{port}"
    return bind_address


def grpc_options(settings: CommonSettings) -> list[tuple[str, int]]:
    size = settings.grpc_max_message_mb * 1024 * 1024
    return [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", 0),
            # Clients ping idle channels every 10 s (voicebus.grpc_client) so that a dead peer is
            # noticed before a turn needs it; servers must accept that instead of answering
            # GOAWAY "too_many_pings" (gRPC's default allows one idle ping per 5 minutes).
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
            ("grpc.http2.max_ping_strikes", 0)]


def server_credentials(settings: CommonSettings) -> grpc.ServerCredentials | None:
    """TLS with VOICEBUS_TLS_CERT and _KEY (both or neither); client certificates signed by
    VOICEBUS_TLS_CA are required when VOICEBUS_TLS_CLIENT_AUTH is on."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_auth:
            raise SystemExit("VOICEBUS_TLS_CLIENT_AUTH needs VOICEBUS_TLS_CERT and VOICEBUS_TLS_KEY")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise SystemExit("TLS needs both VOICEBUS_TLS_CERT and VOICEBUS_TLS_KEY")
    if settings.tls_client_auth and not settings.tls_ca:
        raise SystemExit("VOICEBUS_TLS_CLIENT_AUTH needs VOICEBUS_TLS_CA (the CA that signs client certificates)")
    try:
        pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
        ca = settings.tls_ca.read_bytes() if settings.tls_ca else None
    except OSError as exc:
        raise SystemExit(f"cannot read a TLS file: {exc}") from None
    return grpc.ssl_server_credentials([pair], root_certificates=ca if settings.tls_client_auth else None,
                                       require_client_auth=settings.tls_client_auth)


def around_calls(handler: Any, enter: Callable[[], None], leave: Callable[[], None]) -> Any:
    """The same handler, with `enter()` before and `leave()` after each call (in the call's task,
    so a context variable set by `enter` is seen by the handler)."""
    def wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
        if handler.response_streaming and inspect.isasyncgenfunction(behavior):
            async def stream_wrapper(request: Any, context: aio.ServicerContext) -> Any:
                enter()
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    leave()
            return stream_wrapper

        async def wrapper(request: Any, context: aio.ServicerContext) -> Any:
            enter()
            try:
                return await behavior(request, context)
            finally:
                leave()
        return wrapper

    kinds = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    attr, make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(wrap(getattr(handler, attr)), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


def _is_probe(method: str) -> bool:
    return method.startswith(("/grpc.health.", "/grpc.reflection."))


class LoadTracker(aio.ServerInterceptor):
    """Counts calls in flight (reported in heartbeats); health checks are not counted."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.in_flight = 0

    @property
    def load(self) -> float:
        return self.in_flight / self.capacity

    def _enter(self) -> None:
        self.in_flight += 1
        IN_FLIGHT.inc()

    def _leave(self) -> None:
        self.in_flight -= 1
        IN_FLIGHT.dec()

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or _is_probe(details.method):
            return handler
        return around_calls(handler, self._enter, self._leave)


class RequestIdInterceptor(aio.ServerInterceptor):
    """The caller's `x-request-id` metadata (the gateway's request id) goes into this call's
    log lines; a service that reads a request id from the message itself may override it."""

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        request_id = next((str(v) for k, v in (details.invocation_metadata or ()) if k == "x-request-id"), "")
        if handler is None or not request_id or _is_probe(details.method) or not _REQUEST_ID.match(request_id):
            return handler
        return around_calls(handler, lambda: request_id_var.set(request_id), lambda: None)


async def run_service(
    *,
    settings: CommonSettings,
    address: str,
    register: Register,
    capacity: int = 4,
    capabilities: Iterable[str] = (),
    on_drain: Callable[[float], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight calls and stop.

    `on_drain(grace)` runs once the service says it is draining (health NOT_SERVING, a
    draining heartbeat) and before the server stops: it may end long calls (streams) itself,
    within the grace period; what is left of it is the server's to wait for."""
    name = settings.service_name
    instance_id = f"{name}-{uuid.uuid4().hex[:8]}"
    tracker = LoadTracker(capacity)
    interceptors: list[aio.ServerInterceptor] = [*grpc_server_interceptors(), RequestIdInterceptor(), tracker]
    if token := settings.token():
        interceptors.insert(0, BearerAuthServerInterceptor(token))
    server = aio.server(interceptors=interceptors, options=grpc_options(settings))
    service_names = list(register(server))

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server)
    credentials = server_credentials(settings)
    try:
        if credentials is not None:
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
    except RuntimeError as exc:
        raise SystemExit(f"{name}: cannot listen on {address}: {exc}") from None
    await server.start()
    for service in ["", *service_names]:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    announced = announced_address(address, settings.announce_host)
    log.info("serving", extra={"fields": {"address": address, "announced": announced, "services": service_names,
                                          "tls": credentials is not None}})

    if metrics_address := serve_metrics(address, settings.metrics_port_offset, settings.metrics_host,
                                        settings.token()):
        log.info("metrics", extra={"fields": {"url": f"http://{metrics_address}/metrics"}})
    bus = EventBus(settings.nats_url, name=instance_id, settings=settings)
    await bus.start()
    forwarder = asyncio.create_task(span_forwarder.run(bus))
    heartbeat = asyncio.create_task(bus.heartbeat_loop(
        service=name, instance_id=instance_id, address=announced, interval=settings.heartbeat_seconds,
        capabilities=list(capabilities), load=lambda: (tracker.in_flight, tracker.load)))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down", extra={"fields": {"in_flight": tracker.in_flight}})
    for service in ["", *service_names]:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    heartbeat.cancel()
    await bus.send_heartbeat(service=name, instance_id=instance_id, address=announced, capabilities=list(capabilities),
                             in_flight=tracker.in_flight, load=tracker.load, draining=True)
    grace_ends = loop.time() + settings.shutdown_grace_seconds
    if on_drain:
        await on_drain(settings.shutdown_grace_seconds)
    await server.stop(max(1.0, grace_ends - loop.time()))  # a second for the streams' last words
    if on_shutdown:
        await on_shutdown()
    forwarder.cancel()  # after the last calls ended: it sends their spans on its way out
    await asyncio.gather(forwarder, return_exceptions=True)
    await bus.close()
    log.info("stopped")


def start_process(settings: CommonSettings) -> None:
    """Logging and telemetry for a service process (call first in `__main__`)."""
    secrets = [v.get_secret_value() for v in settings.__dict__.values() if isinstance(v, SecretStr)]
    setup_logging(settings.service_name, settings.log_level, settings.log_format, secrets)
    setup_telemetry(settings.service_name, forward_spans=settings.trace_view)
