"""Settings of the stt service (environment variables `VOICEBUS_*`)."""

from __future__ import annotations

from typing import ClassVar

from voicebus.config import CommonSettings


class SttSettings(CommonSettings):
    service_name: ClassVar[str] = "stt"
