"""`/debug/traces`: recent traces and one trace as a waterfall (JSON, or HTML for a browser).

Behind the bearer token when VOICEBUS_AUTH_TOKEN is set (web_gateway.security); absent
(404) when VOICEBUS_TRACE_VIEW is false.
"""

from __future__ import annotations

import html
import re
import zlib
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from web_gateway.errors import ApiError
from web_gateway.traces import TraceStore

router = APIRouter(prefix="/debug/traces", tags=["debug"])
_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f")

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
td, th { padding: 2px 8px; text-align: left; vertical-align: top; white-space: nowrap; }
tr:nth-child(even) { background: #f6f6f6; }
td.bar { width: 50%; position: relative; }
td.bar div { position: absolute; top: 4px; height: 12px; min-width: 2px; border-radius: 2px; }
td.bar i { position: absolute; top: 1px; width: 2px; height: 18px; background: #000; }
.error { color: #c00; } .muted { color: #777; } .num { text-align: right; }
details summary { cursor: pointer; } dl { margin: 0 0 0 1em; font-size: 12px; white-space: normal; }
dt { font-weight: 600; float: left; margin-right: .5em; } dd { margin: 0; }
"""


def _store(request: Request) -> TraceStore:
    collector = getattr(request.app.state, "traces", None)
    if collector is None:
        raise ApiError(404, "trace_view_off", "the trace view is off (VOICEBUS_TRACE_VIEW=false)")
    return collector.store


def _wants_html(request: Request, fmt: str | None) -> bool:
    if fmt:
        return fmt == "html"
    return "text/html" in request.headers.get("accept", "")


_SERVICE_COLOURS = {"voicebus-gateway": "#4e79a7", "voicebus-orchestrator": "#59a14f", "voicebus-stt": "#b07aa1",
                    "voicebus-llm": "#f28e2b", "voicebus-tts": "#e15759"}


def _colour(service: str) -> str:
    return _SERVICE_COLOURS.get(service) or _COLOURS[zlib.crc32(service.encode()) % len(_COLOURS)]


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"<style>{_STYLE}</style></head><body>{body}</body></html>")


@router.get("", summary="Recent traces (newest first): root span, start, duration, services, span count")
async def list_traces(request: Request, limit: int = Query(50, ge=1, le=1000),
                      format: str | None = Query(None, pattern="^(json|html)$"),
                      streams: bool = Query(False, description="also the Converse streams' own traces")) -> Response:
    traces = _store(request).recent(limit, streams)
    if not _wants_html(request, format):
        return JSONResponse({"traces": traces})
    rows = "".join(
        f"<tr><td><a href='/debug/traces/{t['trace_id']}'><code>{t['trace_id']}</code></a></td>"
        f"<td>{html.escape(t['root'])}</td><td>{t['start']}</td><td class='num'>{t['duration_ms']:.1f} ms</td>"
        f"<td class='num'>{t['span_count']}</td><td>{html.escape(', '.join(t['services']))}</td>"
        f"<td class='{'error' if t['errors'] else 'muted'}'>{html.escape(_turn_text(t))}</td></tr>"
        for t in traces)
    return _page("Voicebus traces", "<h1>Recent traces</h1><table><tr><th>trace</th><th>root</th><th>start (UTC)"
                 "</th><th>duration</th><th>spans</th><th>services</th><th>turn</th></tr>" + rows + "</table>")


def _turn_text(summary: dict[str, Any]) -> str:
    turn = summary.get("turn") or {}
    parts = [turn.get("outcome", "")] + ([f"{summary['errors']} error span(s)"] if summary["errors"] else [])
    return " · ".join(p for p in parts if p)


@router.get("/{trace_id}", summary="One trace as a tree of spans (HTML waterfall when the browser asks for it)")
async def get_trace(request: Request, trace_id: str,
                    format: str | None = Query(None, pattern="^(json|html)$")) -> Response:
    if not _TRACE_ID.match(trace_id):
        raise ApiError(422, "invalid_trace_id", "a trace id is 32 hexadecimal characters")
    tree = _store(request).tree(trace_id)
    if tree is None:
        raise ApiError(404, "trace_not_found", f"no trace {trace_id} among the recent ones (spans arrive about "
                                               "a second after they end; old traces are dropped)")
    if not _wants_html(request, format):
        return JSONResponse(tree)
    return _page(f"trace {trace_id}", _waterfall(tree))


def _waterfall(tree: dict[str, Any]) -> str:
    total = max(tree["duration_ms"], 0.001)
    rows: list[str] = []

    def row(span: dict[str, Any], depth: int) -> None:
        left = 100 * span["start_ms"] / total
        width = max(100 * span["duration_ms"] / total, 0.2)
        marks = "".join(f"<i style='left:{100 * e['at_ms'] / total:.2f}%' title='{html.escape(e['name'])} at "
                        f"{e['at_ms']:.1f} ms'></i>" for e in span["events"])
        details = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
                          for k, v in span["attributes"].items())
        details += "".join(f"<dt>event {html.escape(e['name'])}</dt><dd>at {e['at_ms']:.1f} ms "
                           f"{html.escape(str(e['attributes']) if e['attributes'] else '')}</dd>"
                           for e in span["events"])
        if span["status_message"]:
            details += f"<dt>status</dt><dd>{html.escape(span['status_message'])}</dd>"
        name_class = "error" if span["status"] == "error" else ""
        rows.append(
            f"<tr><td style='padding-left:{8 + 16 * depth}px'><details><summary class='{name_class}'>"
            f"{html.escape(span['name'])}</summary><dl>{details}</dl></details></td>"
            f"<td>{html.escape(span['service'])}</td><td class='num'>{span['duration_ms']:.1f} ms</td>"
            f"<td class='bar'><div style='left:{left:.2f}%;width:{width:.2f}%;background:{_colour(span['service'])}'>"
            f"</div>{marks}</td></tr>")
        for child in span["children"]:
            row(child, depth + 1)

    for root in tree["spans"]:
        row(root, 0)
    turn = tree.get("turn") or {}
    services = html.escape(", ".join(tree["services"]))
    heading = (f"<h1>Trace <code>{tree['trace_id']}</code></h1><p>{html.escape(tree['root'])} · {tree['start']} · "
               f"{tree['duration_ms']:.1f} ms · {tree['span_count']} spans · {services}"
               + (f" · turn {html.escape(str(turn.get('turn_id', '')))}: {html.escape(str(turn.get('outcome', '')))}"
                  if turn else "") + "</p><p class='muted'>Click a span for its attributes and events; black "
               "marks on a bar are its events. <a href='/debug/traces'>All recent traces</a></p>")
    return heading + ("<table><tr><th>span</th><th>service</th><th>duration</th><th>timeline</th></tr>"
                      + "".join(rows) + "</table>")
