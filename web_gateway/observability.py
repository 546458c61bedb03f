"""Per-request context for every HTTP response: a request id, a trace id and latency metrics.

A pure ASGI middleware (not BaseHTTPMiddleware) so that WebSockets pass through untouched
and streaming bodies are not buffered.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voicebus.logs import request_id_var
from voicebus.telemetry import extract_context

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
tracer = trace.get_tracer("web_gateway")


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
        with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as span:
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
