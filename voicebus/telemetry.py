"""OpenTelemetry bootstrap, configured by the standard `OTEL_*` variables.

- `OTEL_TRACES_EXPORTER`: `otlp`, `console` or `none` (comma-separated for several).
  Unset: `otlp` when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else `none`.
- `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (default) or `http/protobuf`.
- `OTEL_SERVICE_NAME` overrides the service name Voicebus sets per process.
- `VOICEBUS_TRACE_VIEW` (default true): also forward spans over NATS to the gateway's
  built-in trace view (see `SpanForwarder`).

Trace context crosses gRPC as metadata (the OTel gRPC interceptors) and NATS as
message headers (`inject_headers` / `extract_context`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

if TYPE_CHECKING:
    from voicebus.bus import EventBus

log = logging.getLogger(__name__)
_configured = False
SPANS_SUBJECT = "voicebus.telemetry.spans"


class SpanForwarder(SpanProcessor):
    """Sends finished spans over NATS (OTLP protobuf) so that the gateway can show recent
    traces of every service without an extra server (`/debug/traces`). Spans wait in a
    bounded queue; a NATS outage loses spans, never slows a call."""

    def __init__(self, max_queued: int = 5000) -> None:
        self._spans: deque[ReadableSpan] = deque(maxlen=max_queued)

    def on_end(self, span: ReadableSpan) -> None:
        self._spans.append(span)

    async def run(self, bus: EventBus, interval: float = 0.5) -> None:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        while True:
            await asyncio.sleep(interval)
            batch = [self._spans.popleft() for _ in range(len(self._spans))]
            if batch and bus.connected:
                bus.publish(SPANS_SUBJECT, encode_spans(batch).SerializeToString())

    def shutdown(self) -> None:
        self._spans.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


span_forwarder = SpanForwarder()


def _exporters() -> list[SpanExporter]:
    names = os.environ.get("OTEL_TRACES_EXPORTER")
    if names is None:
        names = "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"
    exporters: list[SpanExporter] = []
    for name in (n.strip().lower() for n in names.split(",")):
        if name in ("", "none"):
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            if protocol.startswith("http"):
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

                exporters.append(HttpExporter())
            else:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

                exporters.append(GrpcExporter())
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
    return exporters


def setup_telemetry(service_name: str, forward_spans: bool = True) -> TracerProvider:
    """Install the global tracer provider once per process."""
    global _configured
    provider = trace.get_tracer_provider()
    if _configured and isinstance(provider, TracerProvider):
        return provider
    name = os.environ.get("OTEL_SERVICE_NAME") or f"voicebus-{service_name}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if forward_spans:
        provider.add_span_processor(span_forwarder)
    trace.set_tracer_provider(provider)
    _configured = True
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def grpc_server_interceptors() -> list[Any]:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def grpc_client_interceptors() -> list[Any]:
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as message headers (`traceparent`)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, str] | None) -> context.Context:
    return propagate.extract(headers or {})


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""
