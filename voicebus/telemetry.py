"""OpenTelemetry bootstrap, configured by the standard `OTEL_*` variables.

- `OTEL_TRACES_EXPORTER`: `otlp`, `console` or `none` (comma-separated for several).
  Unset: `otlp` when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else `none`.
- `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (default) or `http/protobuf`.
- `OTEL_SERVICE_NAME` overrides the service name Voicebus sets per process.
- `VOICEBUS_TRACE_VIEW` (default true): also forward spans over NATS to the gateway's
  built-in trace view (see `SpanForwarder`).

Trace context crosses gRPC as metadata (the OTel gRPC interceptors; health checks and
reflection are not traced), NATS as message headers (`publish_span` / `consume_span`),
and a Converse stream as `ConverseRequest.traceparent` (one trace per turn, not per stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind
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

        def send() -> None:
            while self._spans:
                # At most 500 spans a message: far below NATS's 1 MB payload limit.
                batch = [self._spans.popleft() for _ in range(min(500, len(self._spans)))]
                if bus.connected:
                    bus.publish(SPANS_SUBJECT, encode_spans(batch).SerializeToString())

        try:
            while True:
                await asyncio.sleep(interval)
                send()
        finally:
            send()  # at shutdown: the last spans go out with the bus's final flush

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


def _traced_rpcs() -> Any:
    """Probes (health checks, reflection) are not traced: they would bury the turns."""
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(filters.any_of(filters.service_prefix("grpc.health."),
                                         filters.service_prefix("grpc.reflection.")))


def grpc_server_interceptors() -> list[Any]:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_traced_rpcs())]


def grpc_client_interceptors() -> list[Any]:
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(filter_=_traced_rpcs()))


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as message headers (`traceparent`)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))


def context_from_traceparent(traceparent: str | None) -> context.Context | None:
    """The context a W3C `traceparent` names, or None when it is empty or malformed."""
    if not traceparent:
        return None
    ctx = propagate.extract({"traceparent": traceparent.strip()})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def traceparent_of(span: Span) -> str:
    """The W3C `traceparent` that makes the next hop a child of `span`."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def trace_id_of(span: Span) -> str:
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""


@contextlib.contextmanager
def attached(ctx: context.Context | None) -> Iterator[None]:
    """Make `ctx` current for the block (tasks created inside inherit it)."""
    if ctx is None:
        yield
        return
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


def _messaging_attributes(subject: str, operation: str) -> dict[str, str]:
    return {"messaging.system": "nats", "messaging.destination.name": subject, "messaging.operation": operation}


@contextlib.contextmanager
def publish_span(subject: str, name: str, headers: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """A PRODUCER span for one NATS publish; yields the headers to send (with its `traceparent`),
    so that the consumer's span is its child."""
    with tracer("voicebus.nats").start_as_current_span(
            f"publish {name}", kind=SpanKind.PRODUCER, attributes=_messaging_attributes(subject, "publish")):
        yield inject_headers(headers)


@contextlib.contextmanager
def consume_span(subject: str, name: str, headers: Mapping[str, str] | None) -> Iterator[Span]:
    """A CONSUMER span continuing the trace carried in a NATS message's headers."""
    with tracer("voicebus.nats").start_as_current_span(
            f"receive {name}", context=extract_context(headers), kind=SpanKind.CONSUMER,
            attributes=_messaging_attributes(subject, "receive")) as span:
        yield span


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""
