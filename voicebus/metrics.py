"""Prometheus metrics, defined once for every service (each process exports its own).

Each gRPC service serves `/metrics` on its gRPC port plus VOICEBUS_METRICS_PORT_OFFSET;
the gateway serves it on its own HTTP port.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

# stage: stt_final (end of speech -> final transcript), llm_first_token, tts_first_chunk,
# first_audio (end of speech -> first audio sent to the client), turn (whole turn).
STAGE_SECONDS = Histogram("voicebus_stage_seconds", "Latency of each stage of a turn", ["stage"], buckets=_BUCKETS)
TURNS = Counter("voicebus_turns_total", "Turns by outcome", ["outcome"])
FALLBACKS = Counter("voicebus_fallbacks_total", "Fallbacks taken (provider, instance or degraded stage)",
                    ["stage", "kind"])
ACTIVE_STREAMS = Gauge("voicebus_active_streams", "Open Converse streams (active conversations)")
QUEUE_DEPTH = Gauge("voicebus_queue_depth", "Work waiting in a queue", ["queue"])
IN_FLIGHT = Gauge("voicebus_rpc_in_flight", "gRPC calls being served")


def serve_metrics(grpc_address: str, offset: int) -> str | None:
    """Start the /metrics HTTP server beside a gRPC service; None when off or the port is taken."""
    if offset <= 0:
        return None
    host, _, port = grpc_address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    metrics_port = int(port) + offset
    try:
        start_http_server(metrics_port, addr=host)
    except OSError as exc:
        log.warning("no /metrics: port %d unavailable (%s)", metrics_port, exc)
        return None
    return f"{host}:{metrics_port}"
