"""`voicebus trace [ID]`: recent traces, or one trace as a tree with a time bar per span,
read from the gateway's built-in trace view (`/debug/traces`)."""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

import httpx

from voicebus.config import CommonSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace_id", nargs="?", help="a trace id (from the X-Trace-Id header or a turn's trace_id); "
                                                    "none = list the recent traces")
    parser.add_argument("--gateway", help="gateway base URL (default: http://VOICEBUS_GATEWAY_ADDR)")
    parser.add_argument("--limit", type=int, default=20, help="how many recent traces to list")
    parser.add_argument("--attributes", action="store_true", help="print each span's attributes and events too")


def _short(service: str) -> str:
    return service.removeprefix("voicebus-")


def render_list(traces: list[dict[str, Any]]) -> str:
    if not traces:
        return "no traces yet (spans reach the gateway about a second after they end)"
    lines = [f"{'trace id':32}  {'start (UTC)':23}  {'duration':>10}  {'spans':>5}  root / services / turn"]
    for t in traces:
        turn = t.get("turn") or {}
        outcome = f"  [{turn['outcome']}]" if turn.get("outcome") else ""
        errors = f"  {t['errors']} error span(s)" if t.get("errors") else ""
        lines.append(f"{t['trace_id']}  {t['start']:23}  {t['duration_ms']:>8.1f}ms  {t['span_count']:>5}  "
                     f"{t['root']} ({', '.join(_short(s) for s in t['services'])}){outcome}{errors}")
    return "\n".join(lines)


def render_tree(tree: dict[str, Any], width: int = 100, attributes: bool = False) -> str:
    """One line per span: offset, duration, service, indented name, and a bar on the trace's time axis."""
    total = max(tree["duration_ms"], 0.001)
    services = ", ".join(_short(s) for s in tree["services"])
    lines = [f"trace {tree['trace_id']}  {tree['start']}  {tree['duration_ms']:.1f} ms  "
             f"{tree['span_count']} spans  ({services})"]
    bar_width = max(10, width - 86)

    def walk(span: dict[str, Any], depth: int) -> None:
        start = int(bar_width * span["start_ms"] / total)
        length = max(1, round(bar_width * span["duration_ms"] / total))
        bar = (" " * start + "█" * length)[:bar_width].ljust(bar_width)
        mark = " !" if span["status"] == "error" else ""
        name = ("  " * depth + span["name"])[:52]
        lines.append(f"{span['start_ms']:>9.1f} {span['duration_ms']:>9.1f}ms  {_short(span['service']):<12} "
                     f"{name:<52} |{bar}|{mark}")
        if attributes:
            pad = " " * 34 + "  " * depth
            for key, value in span["attributes"].items():
                lines.append(f"{pad}{key} = {value}")
            for event in span["events"]:
                lines.append(f"{pad}@{event['at_ms']:.1f} ms {event['name']} {event['attributes'] or ''}".rstrip())
            if span["status_message"]:
                lines.append(f"{pad}status: {span['status_message']}")
        for child in span["children"]:
            walk(child, depth + 1)

    for root in tree["spans"]:
        walk(root, 0)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    settings = CommonSettings()
    base = (args.gateway or f"http://{settings.gateway_addr}").rstrip("/")
    headers = {"Accept": "application/json"}
    if token := settings.token():
        headers["Authorization"] = f"Bearer {token}"
    url = f"{base}/debug/traces/{args.trace_id}" if args.trace_id else f"{base}/debug/traces?limit={args.limit}"
    try:
        reply = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"voicebus trace: cannot reach the gateway at {base} ({exc.__class__.__name__}); is it running? "
              "(--gateway URL, or VOICEBUS_GATEWAY_ADDR)")
        return 2
    if reply.status_code != 200:
        try:
            message = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = reply.text[:300]
        print(f"voicebus trace: {reply.status_code}: {message}")
        return 1
    body = reply.json()
    width = shutil.get_terminal_size((120, 20)).columns if os.isatty(1) else 120
    print(render_tree(body, width, args.attributes) if args.trace_id else render_list(body["traces"]))
    return 0
