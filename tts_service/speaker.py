"""Which engine and voice speak a request, and the fall back to the other engine.

A request names an engine, a voice, a language, or nothing. `Speaker.plan` turns that
into a `SpeechPlan` (or `InvalidRequest` saying what is wrong); `Speaker.speak` says one
sentence with the plan's voice. When that engine fails, the other engine's voice for the
language says it, and every later sentence of the request too (one voice per answer
where possible), marked `fallback_used`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from tts_service.encoding import OGG_OPUS, PCM16, WEBM_OPUS, UnsupportedFormat, check_format
from tts_service.engines import (ENGINES, EngineError, Speech, SpeechEngine, VoiceInfo, language_matches,
                                 normalise_language, primary_subtag)
from voicebus.v1 import audio_pb2, tts_pb2

log = logging.getLogger(__name__)

MIN_SPEAKING_RATE, MAX_SPEAKING_RATE = 0.25, 4.0
OPUS_DEFAULT_RATE = 48_000


class InvalidRequest(ValueError):
    """A request the service cannot serve as asked; the message tells the caller what to change."""


@dataclass
class SpeechPlan:
    """How one request is spoken; `fallen_back` changes once the first engine fails."""

    language: str
    voice: VoiceInfo
    fallback: VoiceInfo | None
    speaking_rate: float
    encoding: int
    sample_rate: int
    fallen_back: bool = False

    @property
    def current_voice(self) -> VoiceInfo:
        return self.fallback if self.fallen_back and self.fallback else self.voice


@dataclass(frozen=True)
class Spoken:
    speech: Speech
    voice: VoiceInfo
    fallback_used: bool


class Speaker:
    def __init__(self, engines: dict[str, SpeechEngine], preferred_engine: str,
                 pyttsx3_voices: dict[str, str]) -> None:
        if preferred_engine not in ENGINES:
            raise ValueError(f"VOICEBUS_TTS_PREFERRED_ENGINE must be one of {', '.join(ENGINES)}, "
                             f"not {preferred_engine!r}")
        self.engines = engines
        self.preferred_engine = preferred_engine
        self.configured_voices = {normalise_language(k): v for k, v in pyttsx3_voices.items()}

    def _engine_voices(self, engine: str) -> list[VoiceInfo]:
        return self.engines[engine].voices() if engine in self.engines else []

    def voices(self, language: str = "", engine: str = "") -> list[VoiceInfo]:
        if engine and engine not in ENGINES:
            raise InvalidRequest(f"unknown engine {engine[:40]!r}; engines: {', '.join(ENGINES)}")
        wanted = normalise_language(language)
        return [voice for name in ENGINES if not engine or name == engine
                for voice in self._engine_voices(name)
                if not wanted or any(language_matches(code, wanted) for code in voice.language_codes)]

    def default_voice(self, engine: str, language: str) -> VoiceInfo | None:
        """The engine's voice for a language, by preference: configured for that exact tag, tagged
        exactly so, configured for its primary language ("en"), then the closest tag."""
        voices = self._engine_voices(engine)
        by_name = {v.name: v for v in voices}
        configured = self.configured_voices if engine == "pyttsx3" else {}

        def tagged(matches: Callable[[str], bool]) -> VoiceInfo | None:
            found = [v for v in voices if any(matches(code) for code in v.language_codes)]
            # espeak names its main voice of a language after it ("roa/fr" before "roa/fr-be").
            return min(found, key=lambda v: (v.name.rsplit("/", 1)[-1] != primary_subtag(language), len(v.name)),
                       default=None)

        return (by_name.get(configured.get(language, ""))
                or tagged(lambda code: code == language)
                or by_name.get(configured.get(primary_subtag(language), ""))
                or tagged(lambda code: language_matches(code, language))
                or tagged(lambda code: primary_subtag(code) == primary_subtag(language)))

    def _find_voice(self, name: str, engine: str) -> VoiceInfo:
        order = [engine] if engine else [self.preferred_engine, *(e for e in ENGINES if e != self.preferred_engine)]
        for candidate in order:
            for voice in self._engine_voices(candidate):
                if voice.name == name:
                    return voice
        where = f"engine {engine}" if engine else "any engine"
        known = ", ".join(v.name for v in self.voices(engine=engine)[:12])
        raise InvalidRequest(f"unknown voice {name[:40]!r} for {where}; ListVoices lists them (e.g. {known})")

    def plan(self, config: tts_pb2.SynthesisConfig) -> SpeechPlan:
        engine = config.engine.strip().lower()
        if engine and engine not in ENGINES:
            raise InvalidRequest(f"unknown engine {config.engine[:40]!r}; engines: {', '.join(ENGINES)}")
        language = normalise_language(config.language_code) or "en"
        if config.voice:
            voice = self._find_voice(config.voice, engine)
            if not config.language_code and voice.language_codes:
                language = voice.language_codes[0]
        else:
            order = [engine] if engine else [self.preferred_engine, *(e for e in ENGINES if e != self.preferred_engine)]
            found = next((v for e in order if (v := self.default_voice(e, language))), None)
            if found is None:
                where = f"engine {engine}" if engine else "no installed engine"
                raise InvalidRequest(f"{where} has no voice for language {config.language_code[:40]!r}; "
                                     "ListVoices lists the languages spoken here")
            voice = found
        other = next(e for e in ENGINES if e != voice.engine)
        rate = config.speaking_rate or 1.0
        if not math.isfinite(rate) or not MIN_SPEAKING_RATE <= rate <= MAX_SPEAKING_RATE:
            raise InvalidRequest(f"speaking_rate {config.speaking_rate:g} is out of range; use 0 (normal) or "
                                 f"{MIN_SPEAKING_RATE:g} to {MAX_SPEAKING_RATE:g}")
        encoding = config.encoding or PCM16
        try:
            check_format(encoding, config.sample_rate_hz)
        except UnsupportedFormat as exc:
            raise InvalidRequest(str(exc)) from None
        sample_rate = config.sample_rate_hz or (
            OPUS_DEFAULT_RATE if encoding in (OGG_OPUS, WEBM_OPUS) else voice.natural_sample_rate_hz)
        return SpeechPlan(language=language, voice=voice, fallback=self.default_voice(other, language),
                          speaking_rate=rate, encoding=encoding, sample_rate=sample_rate)

    async def speak(self, plan: SpeechPlan, text: str) -> Spoken:
        """One sentence; raises EngineError when no engine could say it."""
        voice = plan.current_voice
        try:
            speech = await self.engines[voice.engine].synthesize(text, voice.name, plan.speaking_rate)
            return Spoken(speech, voice, plan.fallen_back)
        except EngineError as exc:
            if plan.fallen_back or plan.fallback is None:
                raise
            log.warning("engine failed; the other engine speaks",
                        extra={"fields": {"engine": voice.engine, "voice": voice.name, "error": str(exc),
                                          "fallback": plan.fallback.name}})
            plan.fallen_back = True
            try:
                speech = await self.engines[plan.fallback.engine].synthesize(text, plan.fallback.name,
                                                                            plan.speaking_rate)
            except EngineError as second:
                raise EngineError(f"{exc}; then {second}") from second
            return Spoken(speech, plan.fallback, True)


def describe_format(plan: SpeechPlan) -> audio_pb2.AudioFormat:
    return audio_pb2.AudioFormat(encoding=plan.encoding, sample_rate_hz=plan.sample_rate, channels=1)
