"""Settings of the orchestrator (environment variables `VOICEBUS_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr

from voicebus.config import CommonSettings


class OrchestratorSettings(CommonSettings):
    service_name: ClassVar[str] = "orchestrator"

    database_url: SecretStr | None = Field(
        None, description="Where conversations are kept: `sqlite:///path/to/file.db` (one orchestrator; a fourth "
        "slash starts an absolute path) or `postgresql://user:password@host:port/database` (any number of "
        "orchestrators); unset = `sqlite:///<data_dir>/voicebus.db`. Migrations run at start.")
    database_pool_size: int = Field(
        10, description="Most connections one orchestrator opens to PostgreSQL (plus one that holds its owner lock).")
    database_timeout_seconds: float = Field(
        10.0, description="Deadline for connecting to the database and for one statement; past it a call fails "
        "as UNAVAILABLE.")
    db_path: Path | None = Field(
        None, description="Deprecated: the SQLite file, used when VOICEBUS_DATABASE_URL is unset "
        "(`sqlite:///<path>` says the same).")
    min_transcript_confidence: float = Field(
        0.30, description="Finals below this confidence get a spoken 'please say that again', no LLM call "
        "(English sentences of three words or more need 0.40: orchestrator/intelligible.py).")
    max_text_chars: int = Field(2000, description="Longest typed user turn accepted.")
    max_audio_mb: float = Field(25.0, description="Largest audio accepted per turn.")
    max_history_message_chars: int = Field(
        8000, description="Longest seeded history message accepted (the LLM's limit per message).")
    stt_timeout_seconds: float = Field(
        30.0, description="Deadline for a whole-file transcription, and for a stream's final after `end_of_audio`.")
    stt_outage_seconds: float = Field(
        30.0, description="While no STT instance answers, a recording keeps its audio and retries this long "
        "(the user is told once), then its turn fails.")
    llm_timeout_seconds: float = Field(60.0, description="Deadline for one LLM answer.")
    tts_timeout_seconds: float = Field(60.0, description="Deadline for one TTS call.")
    history_turns: int = Field(20, description="Most recent turns sent to the LLM (it trims further to its token budget).")
    backchannel_window_ms: int = Field(
        3000, description="Speech over an answer pauses it and is judged by its words; if neither its words nor its "
        "end are known this long after it began, it is a barge-in. It covers a backchannel, the end-of-utterance "
        "silence and a decode on a busy machine; the answer stays paused meanwhile.")
    instance_retry_seconds: float = Field(
        10.0, description="An instance that failed a call is avoided this long (when others are known).")
    turn_lease_seconds: float = Field(
        5.0, gt=0, description="Lease on a conversation's running turn in NATS (KV bucket `voicebus_turn_leases`), "
        "renewed while the turn runs: another orchestrator replica refuses a turn there meanwhile (ABORTED), and "
        "one that died blocks its conversation at most this long.")

    @property
    def max_audio_bytes(self) -> int:
        return int(self.max_audio_mb * 1024 * 1024)

    def database(self) -> Path:
        """The SQLite file used when VOICEBUS_DATABASE_URL is unset."""
        return self.db_path or self.data_dir / "voicebus.db"

    def store_url(self) -> str:
        """VOICEBUS_DATABASE_URL in clear (it may hold a password), or the SQLite default."""
        if self.database_url and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.database()}"
