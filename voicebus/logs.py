"""Logging: JSON lines (or plain text) on stderr, with trace and conversation ids.

Secrets and audio never reach a log line: log calls pass ids and sizes, not payloads.
As a second line of defence, every line is masked, whatever logged it (an exception
message, a library such as uvicorn, which prints `WebSocket /ws?token=...`):
- the values of secret settings (the auth token, API keys, NATS password), of any length,
  also percent-encoded, base64-encoded (at any alignment) or JSON-escaped;
- whatever follows `Bearer `, a `token=`/`password=`-like query parameter, or sits in a
  URL's `user:password@`, even when it is not ours (a wrong token is often someone's
  right one).
"""

from __future__ import annotations

import base64
import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

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


MASK = "***"
# Credentials that are recognisable by their place, whatever their value.
_CREDENTIAL_PATTERNS = (
    re.compile(r"(?i)(\bbearer(?:\s+|%20|\+|\.))[^\s\"',;&]+"),
    re.compile(r"(?i)([?&;](?:token|access_token|auth_token|api_key|apikey|key|password|passwd|secret)=)[^&\s\"'#]+"),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s/@:\"']*:)[^\s/@\"']+(?=@)"),
)


def _base64_forms(secret: bytes) -> set[str]:
    """The secret as it appears inside base64 text that starts 0, 1 or 2 bytes before it
    (e.g. `Basic dXNlcjp0b2tlbg==`): the characters that depend on the secret's bytes only."""
    forms: set[str] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret).decode().rstrip("=")
        start = -(-shift * 8 // 6)  # ceil: the first character without a padding bit
        end = (shift + len(secret)) * 8 // 6  # floor: the last character with only secret bits
        core = encoded[start:end]
        if shift == 0:  # aligned: always, however short, with and without its padding
            forms |= {base64.b64encode(secret).decode(), encoded}
        if len(core) >= 6 or shift == 0 and core:
            forms.add(core)
    forms |= {f.replace("+", "-").replace("/", "_") for f in forms}  # the URL-safe alphabet
    return {f for f in forms if f}


def secret_forms(secret: str) -> set[str]:
    """Every way `secret` may be written in a log line."""
    raw = secret.encode()
    percent = {quote(secret, safe=""), quote(secret), quote_plus(secret, safe=""), quote_plus(secret)}
    percent |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), p) for p in percent}
    return {secret, json.dumps(secret, ensure_ascii=False)[1:-1], json.dumps(secret)[1:-1],
            *percent, *_base64_forms(raw)} - {""}


class RedactingFormatter(logging.Formatter):
    """Another formatter's lines with each secret (in any of its forms) and every recognisable
    credential replaced by `***`."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        forms = {form for s in secrets if s for form in secret_forms(s)}
        # Longest first, in one pass: a short form must not cut a longer one in half first.
        self._secrets = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))) \
            if forms else None

    def redact(self, line: str) -> str:
        if self._secrets is not None:
            line = self._secrets.sub(MASK, line)
        for pattern in _CREDENTIAL_PATTERNS:
            line = pattern.sub(lambda m: m.group(1) + MASK, line)
        return line

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(self.inner.format(record))


def _abandoned_stream(record: logging.LogRecord) -> bool:
    """OpenTelemetry's "Failed to detach context" for a streaming RPC the client left: grpc.aio
    never closes a server handler's response generator, so the garbage collector does, in
    another context, and the tracing interceptor's detach fails (grpc/grpc#42295,
    opentelemetry-python-contrib#2357). The span has ended; nothing else is wrong."""
    if record.getMessage() != "Failed to detach context" or not record.exc_info:
        return False
    cause = record.exc_info[1]
    return cause is not None and isinstance(cause.__context__, GeneratorExit)


class _AbandonedStreamFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _abandoned_stream(record):
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def setup_logging(service: str, level: str = "INFO", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    inner = (JsonFormatter(service) if fmt == "json"
             else logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    handler.setFormatter(RedactingFormatter(inner, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("opentelemetry.context").addFilter(_AbandonedStreamFilter())
    for noisy in ("httpx", "httpcore", "faster_whisper", "nats", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
