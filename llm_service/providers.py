"""Providers behind one interface: each streams text deltas, then one `Completion`.

A provider raises `ProviderError` with a reason a person can read (auth, rate limit,
HTTP status, connection); the server decides what that means (fall back or fail).
"""

from __future__ import annotations

import abc

import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from llm_service.prompting import Message

log = logging.getLogger(__name__)


class ProviderError(Exception):
    """A provider could not answer; the message says why."""


@dataclass
class Completion:
    """The end of one provider's stream."""
    finish_reason: str = "stop"  # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float


StreamItem = str | Completion


class Provider(abc.ABC):
    name: str = ""
    models: list[str]  # the first is the default
    # Why the provider cannot answer at all (no API key...); None = ready.
    unavailable_reason: str | None = None

    @abc.abstractmethod
    def stream(self, messages: Sequence[Message], model: str, sampling: Sampling) -> AsyncIterator[StreamItem]:
        """Text deltas as they come, then one `Completion`; `ProviderError` when it cannot answer."""

    async def close(self) -> None:
        pass


def _usage(usage: dict[str, Any] | None, completion: Completion) -> None:
    if not usage:
        return
    completion.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    completion.completion_tokens = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    completion.cached_prompt_tokens = int(details.get("cached_tokens") or 0)


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class OpenAICompatibleProvider(Provider):
    """Any server speaking OpenAI's streaming chat completions (SSE): vLLM, llama-server,
    and the llama.cpp server embedded by the local provider."""

    def __init__(self, name: str, base_url: str, models: list[str], api_key: str | None = None,
                 timeout: float = 60.0, extra_body: dict[str, Any] | None = None) -> None:
        self.name, self.models = name, models
        self.url = base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.extra_body = extra_body or {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout, connect=5.0))

    async def stream(self, messages: Sequence[Message], model: str, sampling: Sampling) -> AsyncIterator[StreamItem]:
        body = {"model": model, "messages": [m.as_dict() for m in messages], "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, **self.extra_body}
        completion = Completion()
        try:
            async with self._client.stream("POST", self.url, json=body) as response:
                if response.status_code != 200:
                    raise ProviderError(f"HTTP {response.status_code}: {_error_text(await response.aread())}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise ProviderError(f"error in stream: {_error_text(data.encode())}")
                    for choice in chunk.get("choices") or []:
                        if text := (choice.get("delta") or {}).get("content"):
                            yield text
                        if choice.get("finish_reason"):
                            completion.finish_reason = _finish(choice["finish_reason"])
                    _usage(chunk.get("usage"), completion)
        except httpx.HTTPError as exc:
            raise ProviderError(f"{exc.__class__.__name__} talking to {self.url}: {exc}".rstrip(": ")) from None
        except json.JSONDecodeError as exc:
            raise ProviderError(f"unreadable stream from {self.url}: {exc}") from None
        yield completion

    async def close(self) -> None:
        await self._client.aclose()


def _error_text(body: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else its start."""
    try:
        error = json.loads(body).get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
    except (ValueError, AttributeError):
        pass
    return body.decode(errors="replace").strip()[:300] or "(empty body)"


class GroqProvider(Provider):
    """Groq through its official client. Retries are off: the next provider is the retry."""

    name = "groq"

    def __init__(self, api_key: str | None, base_url: str | None, models: list[str], timeout: float) -> None:
        self.models = models
        self._client = None
        if not api_key:
            self.unavailable_reason = "no API key (set GROQ_API_KEY)"
            return
        import groq

        self._groq = groq
        self._client = groq.AsyncGroq(api_key=api_key, base_url=base_url, max_retries=0,
                                      timeout=httpx.Timeout(timeout, connect=5.0))

    async def stream(self, messages: Sequence[Message], model: str, sampling: Sampling) -> AsyncIterator[StreamItem]:
        assert self._client is not None
        groq = self._groq
        completion = Completion()
        try:
            stream = await self._client.chat.completions.create(
                model=model, messages=[m.as_dict() for m in messages], stream=True,  # type: ignore[misc]
                max_tokens=sampling.max_tokens, temperature=sampling.temperature)
            try:
                async for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield choice.delta.content
                        if choice.finish_reason:
                            completion.finish_reason = _finish(choice.finish_reason)
                    usage = chunk.usage or (chunk.x_groq.usage if chunk.x_groq else None)
                    if usage is not None:
                        _usage(usage.model_dump(), completion)
            finally:
                await stream.close()
        except groq.AuthenticationError as exc:
            raise ProviderError(f"authentication failed (HTTP 401): {_status_message(exc)}") from None
        except groq.RateLimitError as exc:
            raise ProviderError(f"rate limited (HTTP 429): {_status_message(exc)}") from None
        except groq.APIStatusError as exc:
            raise ProviderError(f"HTTP {exc.status_code}: {_status_message(exc)}") from None
        except groq.APITimeoutError:
            raise ProviderError("timed out waiting for Groq") from None
        except groq.APIConnectionError as exc:
            raise ProviderError(f"cannot reach Groq at {self._client.base_url}: {exc.__cause__ or exc}") from None
        except groq.GroqError as exc:
            raise ProviderError(f"{exc.__class__.__name__}: {exc}") from None
        except httpx.HTTPError as exc:  # raised as-is by the client while it reads a stream
            raise ProviderError(f"connection to Groq failed: {exc.__class__.__name__}: {exc}") from None
        yield completion

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
    return str(getattr(exc, "message", exc))[:300]
