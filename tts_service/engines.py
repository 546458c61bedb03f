"""What every speech engine offers: its voices, and a sentence's samples on request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

PIPER = "piper"
PYTTSX3 = "pyttsx3"
ENGINES = (PIPER, PYTTSX3)


class EngineError(RuntimeError):
    """An engine could not speak (crash, timeout, broken model): another engine may."""


@dataclass(frozen=True)
class VoiceInfo:
    engine: str
    name: str
    # Normalised BCP-47 tags: lower case, "-" separated ("en-us", "hi").
    language_codes: tuple[str, ...]
    natural_sample_rate_hz: int
    gender: str = ""


@dataclass(frozen=True)
class Speech:
    """Mono float32 samples in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.samples.size / self.sample_rate


class SpeechEngine(Protocol):
    name: str

    def voices(self) -> list[VoiceInfo]: ...

    async def synthesize(self, text: str, voice: str, speaking_rate: float) -> Speech:
        """Speak `text` with `voice` (a name from `voices()`); raises EngineError."""
        ...

    def close(self) -> None: ...


def normalise_language(tag: str) -> str:
    return tag.strip().replace("_", "-").lower()


def language_matches(voice_code: str, wanted: str) -> bool:
    """True when a voice tagged `voice_code` is right for `wanted`: the same tag, or one is a
    more specific form of the other ("en" ~ "en-us", "en-us" ~ "en-us-nyc"; not "en-us" ~ "en-gb")."""
    return (voice_code == wanted or voice_code.startswith(wanted + "-")
            or wanted.startswith(voice_code + "-"))


def primary_subtag(tag: str) -> str:
    return tag.split("-", 1)[0]
