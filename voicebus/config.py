"""Settings from `VOICEBUS_*` environment variables (and a `.env` file).

`CommonSettings` holds what every process needs (addresses, auth, NATS, data folder).
Each service extends it with its own typed settings class in its own folder, so a
service reads only what concerns it. `voicebus config` prints every variable with its
default; the README's table is that output.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOICEBUS_", env_file=".env", extra="ignore", populate_by_name=True
    )
    # The short name used in logs, heartbeats and telemetry (set by each service).
    service_name: ClassVar[str] = "voicebus"

    data_dir: Path = Field(Path("data"), description="Folder for SQLite, assembled models and caches.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: str = Field("json", description="`json` (one object per line) or `text`.")
    auth_token: SecretStr | None = Field(
        None, description="Bearer token required on the gateway and every gRPC service; unset = no auth."
    )
    nats_url: str = Field("nats://127.0.0.1:4222",
                          description="NATS server(s) for events and heartbeats (comma-separated for a cluster).")
    nats_user: str | None = Field(
        None, description="NATS user of this process (`voicebus up` sets one per service); unset = the user in "
        "VOICEBUS_NATS_URL (`nats://user:password@host:port`) or in VOICEBUS_NATS_CREDENTIALS_FILE.")
    nats_password: SecretStr | None = Field(None, description="Password of VOICEBUS_NATS_USER.")
    nats_credentials_file: Path | None = Field(
        None, description="JSON file with this process's NATS `user` and `password` (and the `heartbeat_key`), "
        "as `python -m voicebus.nats_auth` writes them per service for containers; used for what the variables "
        "above leave unset.")
    nats_stream_replicas: int = Field(
        1, ge=1, le=5, description="Copies JetStream keeps of each stream Voicebus makes (the turn events); 3 on a "
        "NATS cluster of three or more nodes, so that losing one loses no event. At most the number of nodes.")
    heartbeat_seconds: float = Field(2.0, description="Interval between service heartbeats on NATS.")
    heartbeat_key: SecretStr | None = Field(
        None, description="Key of the HMAC-SHA256 signature on heartbeats; the orchestrator then ignores unsigned, "
        "forged or stale ones. Unset = the credentials file's, else one derived from VOICEBUS_AUTH_TOKEN; with "
        "neither, heartbeats are unsigned and trusted on their NATS credentials alone.")
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) of this process: gRPC servers and `voicebus up`'s NATS serve TLS "
        "with it, clients present it when a server asks (VOICEBUS_TLS_CLIENT_AUTH). Its names (SAN) must match the "
        "host names that others dial.")
    tls_key: Path | None = Field(None, description="PEM private key of VOICEBUS_TLS_CERT.")
    tls_ca: Path | None = Field(
        None, description="PEM CA certificate(s) that gRPC and NATS clients check servers against (and servers "
        "check client certificates against); setting it or VOICEBUS_TLS_CERT makes every client use TLS. Unset = "
        "the system's CAs.")
    tls_client_auth: bool = Field(
        False, description="Servers (gRPC and `voicebus up`'s NATS) require a client certificate signed by "
        "VOICEBUS_TLS_CA (mutual TLS).")
    shutdown_grace_seconds: float = Field(5.0, description="In-flight calls may finish this long after SIGTERM.")
    trace_view: bool = Field(
        True, description="Built-in trace view: every process forwards its spans over NATS and the gateway keeps "
        "recent traces at /debug/traces (behind the token when one is set); false = neither.")
    metrics_port_offset: int = Field(
        1000, description="Each gRPC service serves Prometheus /metrics on its gRPC port plus this; 0 = off.")
    metrics_host: str = Field(
        "127.0.0.1", description="Interface the services' /metrics listen on (it needs the bearer token when one "
        "is set); `0.0.0.0` for a Prometheus on another machine or container.")
    grpc_max_message_mb: int = Field(32, description="Largest gRPC message accepted or sent.")
    announce_host: str | None = Field(
        None, description="Host name other instances reach this service by, sent in NATS heartbeats; "
        "unset = the bind host, or this machine's host name when binding 0.0.0.0 (containers).")

    stt_addr: str = Field("127.0.0.1:50051", description="STT service gRPC address (bind and connect).")
    llm_addr: str = Field("127.0.0.1:50052", description="LLM service gRPC address.")
    tts_addr: str = Field("127.0.0.1:50053", description="TTS service gRPC address.")
    orchestrator_addr: str = Field("127.0.0.1:50050", description="Orchestrator (Assistant API) gRPC address.")
    gateway_addr: str = Field("127.0.0.1:8000", description="Web gateway HTTP address.")

    def token(self) -> str | None:
        """The auth token in clear, or None when auth is off."""
        return self.auth_token.get_secret_value() if self.auth_token else None


def all_settings_classes() -> list[type[CommonSettings]]:
    """Every settings class in the project, common first (for `voicebus config`)."""
    import importlib

    classes: list[type[CommonSettings]] = [CommonSettings]
    for module in ("stt_service.settings", "llm_service.settings", "tts_service.settings",
                   "orchestrator.settings", "web_gateway.settings"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        classes.extend(
            obj for obj in vars(mod).values()
            if isinstance(obj, type) and issubclass(obj, CommonSettings) and obj is not CommonSettings
            and obj.__module__ == module
        )
    return classes


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, each listed once."""
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for cls in all_settings_classes():
        for name, field in cls.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            env = f"VOICEBUS_{name.upper()}"
            if isinstance(field.validation_alias, AliasChoices):
                env = " / ".join(str(c) for c in field.validation_alias.choices)
            default = field.default
            shown = "" if default is None else str(default.get_secret_value() if isinstance(default, SecretStr) else default)
            rows.append((env, shown, field.description or ""))
    return rows
