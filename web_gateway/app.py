"""The FastAPI application: health and readiness (the API and page come with the gateway issue)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from web_gateway.health import readiness
from web_gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings) -> FastAPI:
    app = FastAPI(title="Voicebus gateway", version="0.1.0")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The gateway process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """200 when the orchestrator and the services it needs are serving, else 503."""
        services = await readiness(settings)
        ready = all(s["status"] == "SERVING" for s in services.values())
        return JSONResponse({"ready": ready, "services": services}, status_code=200 if ready else 503)

    return app
