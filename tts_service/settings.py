"""Settings of the tts service (environment variables `VOICEBUS_*`)."""

from __future__ import annotations

from typing import ClassVar

from voicebus.config import CommonSettings


class TtsSettings(CommonSettings):
    service_name: ClassVar[str] = "tts"
