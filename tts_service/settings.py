"""Settings of the tts service (environment variables `VOICEBUS_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from voicebus.config import CommonSettings


class TtsSettings(CommonSettings):
    service_name: ClassVar[str] = "tts"

    tts_preferred_engine: str = Field(
        "piper", description="Engine (`piper` or `pyttsx3`) for requests that name none, when it has a voice "
        "for the language; otherwise the other engine speaks.")
    tts_piper_voice_dirs: list[Path] = Field(
        [], description="Extra folders searched for Piper voices (`*.onnx` next to "
        "`*.onnx.json`), besides those inside installed Python packages. JSON list.")
    tts_piper_threads: int = Field(2, description="Piper inferences that may run at the same time.")
    tts_pyttsx3_voices: dict[str, str] = Field(
        {"en": "gmw/en-us"}, description="pyttsx3 voice for a language when a request names none (JSON "
        "object, language → voice id); other languages get the espeak-ng voice named after the language.")
    tts_pyttsx3_words_per_minute: int = Field(175, description="pyttsx3/espeak-ng speed at speaking rate 1.0.")
    tts_pyttsx3_timeout_seconds: float = Field(
        30.0, description="A pyttsx3 sentence taking longer fails (its worker process is restarted) and "
        "the other engine speaks it.")
    tts_work_dir: Path | None = Field(
        None, description="Where pyttsx3 writes its temporary WAV files (a private subfolder, removed on "
        "exit); unset = the system's temp folder.")
    tts_max_text_chars: int = Field(
        5000, description="Longest text of one request (Synthesize) or one stream (StreamingSynthesize).")
    tts_max_concurrent_requests: int = Field(
        8, description="Sentences synthesised at once. A call holds a slot only while it synthesises a "
        "sentence (not while it waits for text); other sentences wait in line, first come first served.")
    tts_max_waiting_sentences: int = Field(
        64, description="Sentences that may wait in line for a synthesis slot; beyond that a call gets "
        "RESOURCE_EXHAUSTED at once.")
    tts_max_wait_seconds: float = Field(
        30.0, description="Longest wait in line for a synthesis slot before RESOURCE_EXHAUSTED.")
