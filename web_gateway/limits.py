"""What a client may send, checked at the gateway before anything reaches the orchestrator.

The numbers live here, once; the orchestrator is to enforce the same ones on the gRPC side,
for clients that skip the gateway. Each breach is a 4xx with words (or, on the WebSocket, an
error event that leaves the socket open), never a 5xx or a dropped connection:

- conversation ids: 1-128 characters of A-Z a-z 0-9 _ - (the orchestrator makes 32 hex
  digits). Any other id cannot name a conversation: 404, as for an unknown one. (A 16 KB id
  used to travel to the orchestrator and back in an error's metadata, and came out as a 429.)
- language codes: at most 35 characters of A-Z a-z 0-9 - (the longest BCP 47 tag RFC 5646
  asks implementations to keep); they are stored on every turn.
- a typed turn and each seeded history message: at most 8,000 characters, the LLM's limit
  per message (VOICEBUS_LLM_MAX_MESSAGE_CHARS). A longer seeded message used to be stored and
  then break every later turn of its conversation.
- seeded history: at most 100 messages (the LLM takes 200 per request, the orchestrator sends
  the last 20 turns), instead of any number of stored turns.
- page tokens: the orchestrator's are offsets, "" or at most 9 decimal digits.
- voice and engine names: at most 100 characters.
- no lone UTF-16 surrogate (`"\\ud800"`) anywhere in a JSON body or WebSocket message: JSON
  can spell one, UTF-8 and protobuf cannot carry it (it was an unhandled UnicodeEncodeError).

Also here: a coarse cap on request bodies, before anything buffers them. Routes check the
exact audio size themselves (after multipart or base64 decoding); this guard stops a client
from streaming an unbounded body into memory first.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web_gateway.errors import ApiError, lone_surrogate_message

CONVERSATION_ID_MAX_CHARS = 128
LANGUAGE_MAX_CHARS = 35
TEXT_MAX_CHARS = 8_000
HISTORY_MAX_MESSAGES = 100
PAGE_TOKEN_MAX_DIGITS = 9
NAME_MAX_CHARS = 100

_CONVERSATION_ID = re.compile(f"[A-Za-z0-9_-]{{1,{CONVERSATION_ID_MAX_CHARS}}}")
_LANGUAGE = re.compile(f"[A-Za-z0-9-]{{1,{LANGUAGE_MAX_CHARS}}}")
_PAGE_TOKEN = re.compile(f"[0-9]{{1,{PAGE_TOKEN_MAX_DIGITS}}}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a proper pair decodes to one character, never to these


def invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_argument", message)


def _shown(value: str, limit: int = 40) -> str:
    """A client's value quoted in a message: short, and escaped (repr) whatever it holds."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def lone_surrogate_at(value: Any) -> str | None:
    """Where the first string (key or value) holding a lone surrogate is, or None. A loop, not
    recursion: parsed JSON may nest as deep as the parser allowed."""
    pending: list[tuple[Any, str]] = [(value, "")]
    while pending:
        item, where = pending.pop()
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                return where or "the message"
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                if _LONE_SURROGATE.search(str(key)):
                    return f"a key of {where}" if where else "a key"
                pending.append((child, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list):
            pending.extend((child, f"{where}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None


def check_unicode(value: Any) -> None:
    if where := lone_surrogate_at(value):
        raise invalid(lone_surrogate_message(where))


def conversation_id(value: str | None) -> str:
    """The id stripped; "" = a new conversation. An id that cannot exist is a 404."""
    value = (value or "").strip()
    if value and not _CONVERSATION_ID.fullmatch(value):
        raise ApiError(404, "not_found", f"no conversation {_shown(value)}: conversation ids are 1 to "
                       f"{CONVERSATION_ID_MAX_CHARS} characters of A-Z, a-z, 0-9, _ and -")
    return value


def language(value: str | None) -> str:
    """A BCP 47 language code stripped; "" = detect it."""
    value = (value or "").strip()
    if value and not _LANGUAGE.fullmatch(value):
        raise invalid(f"language {_shown(value)} is not a language code: at most {LANGUAGE_MAX_CHARS} "
                      "characters of A-Z, a-z, 0-9 and - (such as en, hi, pt-BR)")
    return value


def text(value: str, field: str = "text") -> str:
    if len(value) > TEXT_MAX_CHARS:
        raise invalid(f"{field} is {len(value)} characters; the limit is {TEXT_MAX_CHARS}")
    return value


def history(messages: list[Any]) -> None:
    """Seeded messages: how many, and each one's length (roles and types pydantic checked)."""
    if len(messages) > HISTORY_MAX_MESSAGES:
        raise invalid(f"history has {len(messages)} messages; the limit is {HISTORY_MAX_MESSAGES}")
    for index, message in enumerate(messages):
        text(message.content, f"history[{index}].content")


def page_token(value: str) -> str:
    if value and not _PAGE_TOKEN.fullmatch(value):
        raise invalid(f"page_token {_shown(value)} is not one this server gave out; send next_page_token "
                      "from the previous page, or nothing for the first")
    return value


def name(value: Any, field: str) -> str:
    """A voice or engine name: a short string ("" = the default)."""
    value = str(value or "")
    if len(value) > NAME_MAX_CHARS:
        raise invalid(f"{field} is {len(value)} characters; the limit is {NAME_MAX_CHARS}")
    return value


def megabytes(n: int) -> str:
    """Bytes in the unit of VOICEBUS_MAX_UPLOAD_MB (1 MB = 1024 × 1024 bytes): 25 MB is "25.0 MB"."""
    return f"{n / (1024 * 1024):.1f} MB"


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app, self.limit = app, limit_bytes

    def _payload(self) -> bytes:
        return json.dumps({"error": {"code": "too_large", "message": (
            f"the request body is larger than the gateway accepts ({megabytes(self.limit)}: an upload of "
            "VOICEBUS_MAX_UPLOAD_MB as base64 JSON)")}}).encode()

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
