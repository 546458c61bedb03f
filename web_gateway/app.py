"""The FastAPI application: the page, the REST and WebSocket API, health, readiness, metrics.

The gateway holds a gRPC channel to each orchestrator it knows (the configured one, and
those announced in NATS heartbeats: web_gateway/orchestrators.py) and talks to nothing else
(readiness probes aside), except NATS for those heartbeats and the built-in trace view.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from web_gateway import rest
from web_gateway.docs import install_docs
from web_gateway.errors import install_error_handlers
from web_gateway.health import readiness
from web_gateway.limits import BodyLimitMiddleware
from web_gateway.observability import GatewayMetrics, RequestContextMiddleware
from web_gateway.orchestrators import Orchestrators
from web_gateway.security import BearerAuthMiddleware, bearer_scheme
from web_gateway.settings import GatewaySettings
from web_gateway.trace_view import router as trace_router
from web_gateway.traces import TraceCollector
from web_gateway.ws import websocket_endpoint

STATIC = Path(__file__).resolve().parent / "static"
# Declares the bearer scheme in OpenAPI; BearerAuthMiddleware enforces it.
PROTECTED = [Depends(bearer_scheme)]


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.orchestrators = orchestrators = Orchestrators(settings)
        await orchestrators.start()
        # /readyz asks the configured orchestrator over the channel its turns take
        app.state.channel = orchestrators.configured_channel
        app.state.traces = None
        if settings.trace_view:
            app.state.traces = TraceCollector(settings.nats_url, settings.trace_view_max_traces)
            await app.state.traces.start()
        try:
            yield
        finally:
            await orchestrators.close()
            if app.state.traces is not None:
                await app.state.traces.stop()

    # FastAPI's own OpenTelemetry spans are off: RequestContextMiddleware makes the request span
    # (one per request, named by route, none for probes) and WsTurnSpans one per WebSocket turn.
    app = FastAPI(title="Voicebus gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Talk to the Voicebus assistant over HTTP and WebSocket. "
                              "Send `Authorization: Bearer <token>` when the gateway has VOICEBUS_AUTH_TOKEN.")
    app.state.settings = settings
    install_docs(app)  # from files on this machine
    app.state.metrics = metrics = GatewayMetrics()
    install_error_handlers(app)

    # Added innermost first. Request id + trace wrap everything; CORS answers preflights
    # before auth; auth refuses before the size guard reads anything.
    app.add_middleware(BodyLimitMiddleware, limit_bytes=settings.max_upload_bytes() * 4 // 3 + 65_536)
    if token := settings.token():
        app.add_middleware(BearerAuthMiddleware, token=token)
    if origins := settings.cors_origin_list():
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["X-Request-ID", "X-Trace-Id"], allow_credentials="*" not in origins)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The gateway process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """200 when the orchestrator and the services it needs are serving, else 503."""
        services = await readiness(settings, app.state.channel)
        ready = all(s["status"] == "SERVING" for s in services.values())
        return JSONResponse({"ready": ready, "services": services}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], dependencies=PROTECTED, response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics of the gateway (request latency per route, turns by outcome)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(rest.router, dependencies=PROTECTED, tags=["assistant"])
    app.include_router(trace_router, dependencies=PROTECTED)
    app.add_api_websocket_route("/ws", websocket_endpoint)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        # The page loads without a token; it asks for one when the API answers 401.
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
