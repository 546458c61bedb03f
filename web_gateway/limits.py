"""A coarse cap on request bodies, before anything buffers them.

Routes check the exact audio size themselves (after multipart or base64 decoding);
this guard stops a client from streaming an unbounded body into memory first.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app, self.limit = app, limit_bytes

    def _payload(self) -> bytes:
        return json.dumps({"error": {"code": "too_large", "message": (
            f"the request body is larger than the gateway accepts ({self.limit / 1e6:.1f} MB; "
            "set VOICEBUS_MAX_UPLOAD_MB)")}}).encode()

    async def _reject(self, send: Send) -> None:
        body = self._payload()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._reject(send)
            return
        received = 0
        exceeded = started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app answers once the body overflowed (often a generic 400 about
            # an unreadable body) is replaced by our 413.
            nonlocal started
            if exceeded:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._reject(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)
        except Exception:
            if not exceeded:
                raise
            if not started:
                await self._reject(send)
