"""Settings of the web gateway (environment variables `VOICEBUS_*`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from voicebus.config import CommonSettings


class GatewaySettings(CommonSettings):
    service_name: ClassVar[str] = "gateway"

    readiness_timeout_seconds: float = Field(1.0, description="Per-service health check timeout behind /readyz.")
    cors_origins: str = Field(
        "", description="Comma-separated origins the gateway answers cross-origin (CORS); empty = none, `*` = any.")
    max_upload_mb: float = Field(
        25.0, description="Largest audio upload the gateway accepts, in MB of 1024 × 1024 bytes (HTTP 413 "
                          "above it); a JSON body may hold it as base64, a third larger.")
    gateway_turn_timeout_seconds: float = Field(
        180.0, description="Deadline of one REST turn (ProcessTurn) at the orchestrator; then HTTP 503.")
    gateway_call_timeout_seconds: float = Field(
        10.0, description="Deadline of conversation list/read/delete calls at the orchestrator.")
    orchestrator_retry_seconds: float = Field(
        10.0, description="An orchestrator that failed a call or a stream gets no new conversation this long "
        "(when others are known from their heartbeats).")
    trace_view_max_traces: int = Field(
        200, description="Traces the gateway keeps in memory for /debug/traces (oldest dropped first; at most "
        "1000 spans each).")

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
