"""Bearer token on the gateway's API (when VOICEBUS_AUTH_TOKEN is set).

HTTP: `Authorization: Bearer <token>`. WebSocket: the same header, a `?token=` query
parameter, or a `bearer.<token>` subprotocol (what a browser can send, since it cannot
set headers on a WebSocket).
"""

from __future__ import annotations

import hmac
import json

from fastapi import WebSocket
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from voicebus.auth import bearer_matches
from web_gateway.errors import error_body

# Declares the scheme in OpenAPI so that /docs has an "Authorize" button.
bearer_scheme = HTTPBearer(auto_error=False, description="VOICEBUS_AUTH_TOKEN, when the gateway has one.")
WS_PROTOCOL = "voicebus.v1"
BEARER_PROTOCOL_PREFIX = "bearer."


class BearerAuthMiddleware:
    """401 JSON for the API, /metrics and /debug/ without the token, before any body is read (so
    an unauthenticated client learns nothing about its input, and uploads nothing big).
    The page, its static files, /docs and the health probes stay open."""

    PROTECTED = ("/api/", "/metrics", "/debug/")

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.PROTECTED):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", [])).get(b"authorization")
        value = header.decode("latin-1") if header else None
        if bearer_matches(value, self.token):
            await self.app(scope, receive, send)
            return
        reason = "missing bearer token" if not value else "invalid bearer token"
        body = json.dumps(error_body("unauthenticated", f"{reason}: send 'Authorization: Bearer "
                                                        "<VOICEBUS_AUTH_TOKEN>'")).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="voicebus"')]})
        await send({"type": "http.response.body", "body": body})


def offered_subprotocols(websocket: WebSocket) -> list[str]:
    raw = websocket.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def websocket_authorized(websocket: WebSocket) -> bool:
    token = websocket.app.state.settings.token()
    if token is None:
        return True
    if bearer_matches(websocket.headers.get("authorization"), token):
        return True
    candidates = [websocket.query_params.get("token", "")]
    candidates += [p[len(BEARER_PROTOCOL_PREFIX):] for p in offered_subprotocols(websocket)
                   if p.startswith(BEARER_PROTOCOL_PREFIX)]
    return any(c and hmac.compare_digest(c.encode(), token.encode()) for c in candidates)


def chosen_subprotocol(websocket: WebSocket) -> str | None:
    """A browser drops the connection unless the server picks one of the subprotocols it
    offered: prefer `voicebus.v1`, so the token is not echoed back."""
    offered = offered_subprotocols(websocket)
    if WS_PROTOCOL in offered:
        return WS_PROTOCOL
    return next((p for p in offered if p.startswith(BEARER_PROTOCOL_PREFIX)), None)
