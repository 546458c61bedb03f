"""Settings of the web gateway (environment variables `VOICEBUS_*`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from voicebus.config import CommonSettings


class GatewaySettings(CommonSettings):
    service_name: ClassVar[str] = "gateway"

    readiness_timeout_seconds: float = Field(1.0, description="Per-service health check timeout behind /readyz.")
