"""Bearer token on the gateway's API (when VOICEBUS_AUTH_TOKEN is set).

HTTP: `Authorization: Bearer <token>`. WebSocket: the same header, a `?token=` query
parameter, or a `bearer.<token>` subprotocol (what a browser can send, since it cannot
set headers on a WebSocket).
"""

from __future__ import annotations

import hmac

from fastapi import Request, WebSocket
from fastapi.security import HTTPBearer

from voicebus.auth import bearer_matches
from web_gateway.errors import ApiError

# Declares the scheme in OpenAPI so that /docs has an "Authorize" button.
bearer_scheme = HTTPBearer(auto_error=False, description="VOICEBUS_AUTH_TOKEN, when the gateway has one.")
WS_PROTOCOL = "voicebus.v1"
BEARER_PROTOCOL_PREFIX = "bearer."


def _token(request: Request | WebSocket) -> str | None:
    return request.app.state.settings.token()


async def require_token(request: Request) -> None:
    """FastAPI dependency: 401 JSON unless the request carries the token."""
    token = _token(request)
    if token is None:
        return
    header = request.headers.get("authorization")
    if not bearer_matches(header, token):
        reason = "missing bearer token" if not header else "invalid bearer token"
        raise ApiError(401, "unauthenticated", f"{reason}: send 'Authorization: Bearer <VOICEBUS_AUTH_TOKEN>'")


def offered_subprotocols(websocket: WebSocket) -> list[str]:
    raw = websocket.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def websocket_authorized(websocket: WebSocket) -> bool:
    token = _token(websocket)
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
