"""Settings of the llm service (environment variables `VOICEBUS_*`)."""

from __future__ import annotations

from typing import ClassVar

from voicebus.config import CommonSettings


class LlmSettings(CommonSettings):
    service_name: ClassVar[str] = "llm"
