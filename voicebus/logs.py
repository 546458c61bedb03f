"""Logging: JSON lines (or plain text) on stderr, with trace and conversation ids.

Secrets and audio never reach a log line: log calls pass ids and sizes, not payloads.
As a second line of defence, the values of secret settings (the auth token, API keys)
are masked in every line, whatever logged them (an exception message, a library).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterable

# Set by handlers for the duration of a request; copied into every log line.
conversation_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("conversation_id", default="")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def _trace_ids() -> tuple[str, str]:
    try:
        from opentelemetry import trace

        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    except Exception:  # telemetry must never break logging
        pass
    return "", ""


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id, span_id = _trace_ids()
        if trace_id:
            entry["trace_id"], entry["span_id"] = trace_id, span_id
        if cid := conversation_id_var.get():
            entry["conversation_id"] = cid
        if rid := request_id_var.get():
            entry["request_id"] = rid
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    """Another formatter's lines with each secret replaced by `***`."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        # Short values would mask ordinary words; real tokens and keys are long.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


def setup_logging(service: str, level: str = "INFO", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    inner = (JsonFormatter(service) if fmt == "json"
             else logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    handler.setFormatter(RedactingFormatter(inner, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "faster_whisper", "nats", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
