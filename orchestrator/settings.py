"""Settings of the orchestrator service (environment variables `VOICEBUS_*`)."""

from __future__ import annotations

from typing import ClassVar

from voicebus.config import CommonSettings


class OrchestratorSettings(CommonSettings):
    service_name: ClassVar[str] = "orchestrator"
