"""Per-request context for every HTTP response: a request id, a trace id and latency metrics.

A pure ASGI middleware (not BaseHTTPMiddleware) so that WebSockets pass through untouched
and streaming bodies are not buffered.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voicebus.logs import request_id_var
from voicebus.telemetry import context_from_traceparent, extract_context, trace_id_of

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
tracer = trace.get_tracer("web_gateway")
# Probes, scrapes, the page's files and the trace view itself are not recorded: traces are for
# turns (and API calls), and a poller would otherwise fill the trace view with itself. They
# still get a trace id (an unsampled span, so calls they make are not recorded either).
UNTRACED_PREFIXES = ("/healthz", "/readyz", "/metrics", "/debug/", "/static/", "/favicon")
_ids = RandomIdGenerator()


def unrecorded_span(parent: Any) -> trace.Span:
    parent_ctx = trace.get_current_span(parent).get_span_context()
    trace_id = parent_ctx.trace_id if parent_ctx.is_valid else _ids.generate_trace_id()
    return trace.NonRecordingSpan(SpanContext(trace_id, _ids.generate_span_id(), is_remote=False,
                                              trace_flags=TraceFlags(TraceFlags.DEFAULT)))


class GatewayMetrics:
    """Prometheus metrics of one gateway app (own registry, so tests can build several apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_seconds = Histogram(
            "voicebus_gateway_http_request_seconds", "HTTP request latency by route.",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
        self.turns = Counter("voicebus_gateway_turns_total", "Turns handled by the gateway, by route and outcome.",
                             ["route", "outcome"], registry=self.registry)
        self.ws_open = Gauge("voicebus_gateway_websockets_open", "WebSocket connections open now.",
                             registry=self.registry)
        self.ws_first_audio = Histogram(
            "voicebus_gateway_ws_first_audio_seconds",
            "WebSocket: end of audio (or text received) to the first audio chunk sent to the browser.",
            registry=self.registry, buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 20))


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def trace_context_from(headers: list[tuple[bytes, bytes]]) -> Any:
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in (b"traceparent", b"tracestate")}
    return extract_context(carrier)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        request_id = request_id_from(headers)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        try:
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
            else:
                await self._http(scope, receive, send, request_id, trace_context_from(headers))
        finally:
            request_id_var.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str, parent: Any) -> None:
        started = time.perf_counter()
        status = 500
        name = f"{scope['method']} {scope['path']}"
        traced = not (scope["path"] == "/" or scope["path"].startswith(UNTRACED_PREFIXES))
        span_cm = (tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) if traced
                   else trace.use_span(unrecorded_span(parent)))
        with span_cm as span:
            ctx = span.get_span_context()
            span_trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else ""

            async def send_with_ids(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    trace_id = scope["state"].get("trace_id") or span_trace_id
                    extra = [(b"x-request-id", request_id.encode())]
                    if trace_id:
                        extra.append((b"x-trace-id", trace_id.encode()))
                    message["headers"] = [*message.get("headers", []), *extra]
                await send(message)

            try:
                await self.app(scope, receive, send_with_ids)
            finally:
                route = scope.get("route")
                label = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/")
                                                         else "unmatched")
                span.update_name(f"{scope['method']} {label}")  # the route, not ids in the path
                span.set_attribute("http.route", label)
                span.set_attribute("http.status_code", status)
                self.metrics.http_seconds.labels(scope["method"], label, str(status)).observe(
                    time.perf_counter() - started)


class WsTurnSpans:
    """The gateway's span of each WebSocket turn: the root of the turn's trace, or a child of
    the traceparent the client sent for it. It starts when the turn starts here (a `text`,
    or a recording's `audio_start` or first audio), its traceparent goes to the orchestrator
    in that message, and it ends with the turn's last event. The Converse stream itself lives
    for many turns, so it is not what a turn's trace hangs from."""

    MAX_OPEN = 16  # turns the orchestrator never started (e.g. silence) are not kept for ever

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._open: dict[str, trace.Span] = {}  # trace id -> span, oldest first
        self._turn_traces: dict[str, str] = {}  # turn id -> trace id
        self._audio_sent: set[str] = set()  # trace ids whose first audio went out

    def begin(self, source: str, traceparent: str) -> trace.Span:
        parent = context_from_traceparent(traceparent) or otel_context.Context()
        span = tracer.start_span("ws turn", context=parent, kind=SpanKind.SERVER,
                                 attributes={"voicebus.input": source, "voicebus.request_id": self.request_id})
        while len(self._open) >= self.MAX_OPEN:
            self.end(next(iter(self._open)), "abandoned")
        self._open[trace_id_of(span)] = span
        return span

    def event(self, trace_id: str, turn_id: str, kind: str, conversation_id: str) -> trace.Span | None:
        """Follow a Converse event; returns the span it ended, if any."""
        trace_id = trace_id or self._turn_traces.get(turn_id, "")
        span = self._open.get(trace_id)
        if span is None:
            return None
        if kind == "turn_started":
            self._turn_traces[turn_id] = trace_id
            span.set_attributes({"voicebus.turn_id": turn_id, "voicebus.conversation_id": conversation_id})
        elif kind == "audio" and trace_id not in self._audio_sent:
            self._audio_sent.add(trace_id)
            span.add_event("first_audio_sent")
        elif kind in ("turn_completed", "turn_interrupted", "turn_failed", "error"):
            self._turn_traces.pop(turn_id, None)
            return self.end(trace_id, kind.removeprefix("turn_"))
        return None

    def end(self, trace_id: str, outcome: str) -> trace.Span | None:
        span = self._open.pop(trace_id, None)
        self._audio_sent.discard(trace_id)
        if span is not None:
            span.set_attribute("voicebus.outcome", outcome)
            if outcome in ("failed", "error", "stream_failed"):
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end()
        return span

    def end_all(self, outcome: str) -> None:
        for trace_id in list(self._open):
            self.end(trace_id, outcome)
        self._turn_traces.clear()
