"""Recent traces of every service, kept in the gateway's memory for `/debug/traces`.

Every Voicebus process forwards its finished spans over NATS (`voicebus.telemetry.spans`,
OTLP protobuf; see voicebus.telemetry.SpanForwarder). The gateway collects them here,
so a developer sees where a turn's time went without running a tracing server. Memory
is bounded: the oldest traces are dropped first, and a trace keeps at most
`MAX_SPANS_PER_TRACE` spans.

The gateway is also a consumer of turn events (`voicebus.turn.*.turn_completed` and the
other endings): each becomes a CONSUMER span in the turn's trace (its context comes from
the message headers), and the outcome it reports is shown in the list of traces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as OtlpStatus

from voicebus.bus import EventBus
from voicebus.telemetry import SPANS_SUBJECT, consume_span, span_forwarder
from voicebus.v1 import assistant_pb2, events_pb2

log = logging.getLogger(__name__)

MAX_SPANS_PER_TRACE = 1000
MAX_VALUE_CHARS = 500
TURN_ENDINGS = ("turn_completed", "turn_failed", "turn_interrupted")
_KINDS = {OtlpSpan.SPAN_KIND_INTERNAL: "internal", OtlpSpan.SPAN_KIND_SERVER: "server",
          OtlpSpan.SPAN_KIND_CLIENT: "client", OtlpSpan.SPAN_KIND_PRODUCER: "producer",
          OtlpSpan.SPAN_KIND_CONSUMER: "consumer"}
_STATUS = {OtlpStatus.STATUS_CODE_OK: "ok", OtlpStatus.STATUS_CODE_ERROR: "error"}


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    value = getattr(v, kind) if kind else None
    return value[:MAX_VALUE_CHARS] if isinstance(value, str) else value


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _service(attributes: list[KeyValue]) -> str:
    return str(_attributes(attributes).get("service.name", "unknown"))


@dataclass
class SpanRecord:
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    links: list[dict[str, str]]


@dataclass
class TraceRecord:
    spans: dict[str, SpanRecord] = field(default_factory=dict)
    turn: dict[str, Any] = field(default_factory=dict)  # from the turn-ended event, when one came


STREAM_ROOT = "/voicebus.v1.Assistant/Converse"


class TraceStore:
    """The most recent `max_traces` traces, by the time their first span arrived."""

    def __init__(self, max_traces: int) -> None:
        self.max_traces = max(1, max_traces)
        self._traces: OrderedDict[str, TraceRecord] = OrderedDict()

    def _trace(self, trace_id: str) -> TraceRecord:
        record = self._traces.get(trace_id)
        if record is None:
            record = self._traces[trace_id] = TraceRecord()
            while len(self._traces) > self.max_traces:
                self._traces.popitem(last=False)
        return record

    def add_otlp(self, payload: bytes) -> int:
        """Spans from one forwarded OTLP message; returns how many were kept."""
        request = ExportTraceServiceRequest.FromString(payload)
        kept = 0
        for resource_spans in request.resource_spans:
            service = _service(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    record = self._trace(span.trace_id.hex())
                    if len(record.spans) >= MAX_SPANS_PER_TRACE:
                        continue
                    record.spans[span.span_id.hex()] = SpanRecord(
                        span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(), name=span.name,
                        service=service, kind=_KINDS.get(span.kind, "internal"),
                        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                        status=_STATUS.get(span.status.code, "unset"), status_message=span.status.message,
                        attributes=_attributes(span.attributes),
                        events=[(e.name, e.time_unix_nano, _attributes(e.attributes)) for e in span.events],
                        links=[{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                               for link in span.links])
                    kept += 1
        return kept

    def note_turn(self, trace_id: str, turn: dict[str, Any]) -> None:
        if trace_id:
            self._trace(trace_id).turn.update(turn)

    # ---- reading ------------------------------------------------------------------
    @staticmethod
    def _roots(record: TraceRecord) -> list[SpanRecord]:
        """Spans whose parent is not in the trace (the root, or a remote parent's child)."""
        return sorted((s for s in record.spans.values()
                       if not s.parent_span_id or s.parent_span_id not in record.spans), key=lambda s: s.start_ns)

    def _summary(self, trace_id: str, record: TraceRecord) -> dict[str, Any]:
        spans = record.spans.values()
        start = min(s.start_ns for s in spans)
        end = max(s.end_ns for s in spans)
        root = self._roots(record)[0]
        started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start / 1e9)) + f".{start // 1_000_000 % 1000:03d}Z"
        return {
            "trace_id": trace_id, "root": root.name, "root_service": root.service,
            "start": started,
            "start_unix_nano": start, "duration_ms": round((end - start) / 1e6, 3),
            "services": sorted({s.service for s in spans}), "span_count": len(record.spans),
            "errors": sum(1 for s in spans if s.status == "error"), "turn": record.turn or None,
        }

    def recent(self, limit: int = 50, streams: bool = False) -> list[dict[str, Any]]:
        """Newest first. A Converse stream's own trace (its turns are traces of their own) is left
        out unless `streams`: one per conversation, it only says that a stream was open."""
        summaries = [self._summary(tid, rec) for tid, rec in list(self._traces.items()) if rec.spans]
        if not streams:
            summaries = [s for s in summaries if s["turn"] or not s["root"].endswith(STREAM_ROOT)]
        summaries.sort(key=lambda s: s["start_unix_nano"], reverse=True)
        return summaries[:limit]

    def tree(self, trace_id: str) -> dict[str, Any] | None:
        """The trace as nested spans (children by start time), times in ms from the trace's start."""
        record = self._traces.get(trace_id.lower())
        if record is None or not record.spans:
            return None
        summary = self._summary(trace_id.lower(), record)
        origin = summary["start_unix_nano"]
        children: dict[str, list[SpanRecord]] = {}
        for span in record.spans.values():
            children.setdefault(span.parent_span_id, []).append(span)

        def node(span: SpanRecord) -> dict[str, Any]:
            return {
                "span_id": span.span_id, "parent_span_id": span.parent_span_id, "name": span.name,
                "service": span.service, "kind": span.kind,
                "start_ms": round((span.start_ns - origin) / 1e6, 3),
                "duration_ms": round((span.end_ns - span.start_ns) / 1e6, 3),
                "status": span.status, "status_message": span.status_message, "attributes": span.attributes,
                "events": [{"name": name, "at_ms": round((at - origin) / 1e6, 3), "attributes": attrs}
                           for name, at, attrs in span.events],
                "links": span.links,
                "children": [node(c) for c in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns)],
            }

        roots = self._roots(record)
        return {**summary, "spans": [{**node(r), "remote_parent": bool(r.parent_span_id)} for r in roots]}


class TraceCollector:
    """The gateway's NATS side of the trace view: collects spans, consumes turn events and
    forwards the gateway's own spans (it has no `run_service` to do it)."""

    def __init__(self, nats_url: str, max_traces: int) -> None:
        self.store = TraceStore(max_traces)
        self.bus = EventBus(nats_url, name="gateway-traces")
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.bus.start()
        self._tasks = [asyncio.create_task(span_forwarder.run(self.bus)), asyncio.create_task(self._subscribe())]

    async def _subscribe(self) -> None:
        await self.bus.subscribe(SPANS_SUBJECT, self._on_spans)
        for ending in TURN_ENDINGS:
            await self.bus.subscribe(f"voicebus.turn.*.{ending}", self._on_turn_ended)

    async def _on_spans(self, msg: Any) -> None:
        try:
            self.store.add_otlp(msg.data)
        except Exception as exc:  # noqa: BLE001 - a bad message must not stop the subscription
            log.warning("could not read forwarded spans: %s", exc)

    async def _on_turn_ended(self, msg: Any) -> None:
        ending = msg.subject.rsplit(".", 1)[-1]
        with consume_span(msg.subject, f"turn.{ending}", msg.headers) as span:
            try:
                event = events_pb2.TurnEvent.FromString(msg.data)
            except Exception:  # noqa: BLE001 - not ours to fix; say so on the span
                span.set_attribute("error.type", "undecodable TurnEvent")
                return
            span.set_attributes({"voicebus.conversation_id": event.conversation_id,
                                 "voicebus.turn_id": event.turn_id})
            turn = event.turn
            self.store.note_turn(event.trace_id, {
                "conversation_id": event.conversation_id, "turn_id": event.turn_id,
                "outcome": assistant_pb2.TurnOutcome.Name(turn.outcome).removeprefix("TURN_OUTCOME_").lower()
                if event.HasField("turn") else ending.removeprefix("turn_"),
                "first_audio_seconds": round(turn.timings.first_audio_seconds, 3),
                "total_seconds": round(turn.timings.total_seconds, 3)})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.bus.close()
