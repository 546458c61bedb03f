"""Prometheus metrics, defined once here for every service (each process exports its own).

Each gRPC service serves `/metrics` on its gRPC port plus VOICEBUS_METRICS_PORT_OFFSET, on
VOICEBUS_METRICS_HOST (127.0.0.1 unless told otherwise: metrics name models, providers and
load, nothing another machine needs to see uninvited), behind the bearer token when one is
set, like the gateway's /metrics on its own HTTP port.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from voicebus.auth import bearer_matches

log = logging.getLogger(__name__)

_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

# --- the turn, as the orchestrator sees it (one observation per turn and stage) ---------
# stage: stt_final (end of speech -> final transcript), llm_first_token (request -> first
# delta), tts_first_chunk (first sentence handed to TTS -> its audio), first_audio (end of
# speech or text received -> first audio sent to the client), turn (the whole turn).
STAGE_SECONDS = Histogram("voicebus_stage_seconds", "Latency of each stage of a turn, seen by the orchestrator",
                          ["stage"], buckets=_BUCKETS)
TURNS = Counter("voicebus_turns_total", "Turns by outcome (completed, failed, interrupted, no_speech)", ["outcome"])
# stage: stt, llm, tts. kind: instance (another replica took the call), provider (an LLM
# provider was skipped for the next one), engine (TTS fell back to another engine),
# degraded (the stage's output was dropped: text without speech).
FALLBACKS = Counter("voicebus_fallbacks_total", "Fallbacks taken, by stage and kind (instance, provider, engine, "
                    "degraded)", ["stage", "kind"])
OVERLAPS = Counter("voicebus_overlaps_total", "Speech over an answer, by verdict (barge_in, backchannel: "
                   "the answer went on)", ["verdict"])
ACTIVE_STREAMS = Gauge("voicebus_active_streams", "Open Converse streams (active conversations)")
# queue: stt_inference (decodes running or waiting for the Whisper thread), tts_synthesis
# (sentences being synthesized or waiting for an engine).
QUEUE_DEPTH = Gauge("voicebus_queue_depth", "Work in progress or waiting in a queue", ["queue"])
IN_FLIGHT = Gauge("voicebus_rpc_in_flight", "gRPC calls being served")

# --- inside each service ----------------------------------------------------------------
STT_SECONDS = Histogram("voicebus_stt_seconds", "STT: end of speech -> final (kind=stream_final) or a whole file's "
                        "transcription (kind=file)", ["kind"], buckets=_BUCKETS)
LLM_FIRST_TOKEN_SECONDS = Histogram("voicebus_llm_first_token_seconds", "LLM: request start to first delta, by "
                                    "provider", ["provider"],
                                    buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30))
LLM_GENERATIONS = Counter("voicebus_llm_generations_total", "LLM: generations by provider and outcome "
                          "(completed, cancelled, failed)", ["provider", "outcome"])
TTS_FIRST_CHUNK_SECONDS = Histogram("voicebus_tts_first_chunk_seconds", "TTS: first complete sentence -> its audio "
                                    "message, by engine", ["engine"],
                                    buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5))
TTS_SENTENCES = Counter("voicebus_tts_sentences_total", "TTS: sentences spoken, by engine and whether it was a "
                        "fallback", ["engine", "fallback"])

class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """No access log on stderr (a scrape every few seconds is not news)."""


def bearer_protected(app: Callable[..., Iterable[bytes]], token: str | None) -> Callable[..., Iterable[bytes]]:
    """The WSGI app, answering 401 without `Authorization: Bearer <token>` (when a token is set)."""
    if not token:
        return app

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if bearer_matches(environ.get("HTTP_AUTHORIZATION"), token):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", 'Bearer realm="voicebus"')])
        return [b"missing or invalid bearer token: send 'Authorization: Bearer <VOICEBUS_AUTH_TOKEN>'\n"]
    return guarded


def serve_metrics(grpc_address: str, offset: int, host: str = "127.0.0.1", token: str | None = None) -> str | None:
    """Start the /metrics HTTP server beside a gRPC service (a daemon thread); its address, or
    None when off or the port is taken."""
    if offset <= 0:
        return None
    metrics_port = int(grpc_address.rpartition(":")[2]) + offset
    host = host.strip("[]") or "127.0.0.1"

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        httpd = make_server(host, metrics_port, bearer_protected(make_wsgi_app(), token), Server,
                            handler_class=_QuietHandler)
    except OSError as exc:
        log.warning("no /metrics: port %d unavailable (%s)", metrics_port, exc)
        return None
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return f"{host}:{metrics_port}"
