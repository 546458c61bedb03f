"""A scripted LanguageModel servicer: each Generate call streams one Reply's tokens.

What matches the real service (llm_service/server.py): deltas, then exactly one `done`
(finish reason, usage, the provider and model that answered, fallbacks, first-token and
total seconds, the answer's language); every response carries the request's request_id
(or a generated one when it had none); a failure after text went out ends the stream
with UNAVAILABLE, never a second answer; an empty message list is INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from grpc import aio

from fake_common import CallRecord, FakeBase, Failure, as_failure
from voicebus.v1 import llm_pb2, llm_pb2_grpc


@dataclass
class Reply:
    """One answer. `fail_before_first` (a code, or (code, message)) aborts before any token;
    `fail_after=N` aborts with `fail_with` after N tokens. `hold_after=N` pauses after N
    tokens until `FakeLLM.release()` (or the client cancels): a barge-in that must land
    mid-answer then does so every time, whatever the machine's speed."""

    tokens: list[str]
    first_token_delay: float = 0.02
    token_delay: float = 0.005
    provider: str = "fake"
    model: str = "fake-llm"
    finish_reason: int = llm_pb2.FINISH_REASON_STOP
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # (provider, reason) skipped first
    fail_before_first: grpc.StatusCode | Failure | None = None
    fail_after: int | None = None
    fail_with: Failure = (grpc.StatusCode.UNAVAILABLE, "fake failed after the answer had started")
    hold_after: int | None = None

    @classmethod
    def text(cls, text: str, **options: object) -> Reply:
        """A reply whose tokens are the words of `text`, each with its following space."""
        return cls(tokens=re.findall(r"\S+\s*", text), **options)  # type: ignore[arg-type]

    @property
    def answer(self) -> str:
        return "".join(self.tokens)


@dataclass
class LlmCall(CallRecord):
    request: llm_pb2.GenerateRequest | None = None
    reply: Reply | None = None
    tokens_sent: int = 0

    @property
    def text_sent(self) -> str:
        return "".join(self.reply.tokens[:self.tokens_sent]) if self.reply else ""


def _words(text: str) -> int:
    return len(text.split())


class FakeLLM(FakeBase, llm_pb2_grpc.LanguageModelServicer):
    """`replies`: one per call in order, the last repeating; or `reply_for(request) -> Reply`."""

    def __init__(self, replies: list[Reply] | None = None, *,
                 reply_for: Callable[[llm_pb2.GenerateRequest], Reply] | None = None) -> None:
        super().__init__()
        if replies is not None and reply_for is not None:
            raise ValueError("give replies or reply_for, not both")
        self.replies = list(replies) if replies else [Reply.text("The capital of France is Paris.")]
        self.reply_for = reply_for
        self.requests: list[llm_pb2.GenerateRequest] = []
        self.calls: list[LlmCall] = []
        self._release = asyncio.Event()

    def release(self) -> None:
        """Let every held reply go on (and the ones held later too)."""
        self._release.set()

    def hold(self) -> None:
        """Make `hold_after` pause again after a `release()`."""
        self._release.clear()

    def _next_reply(self, request: llm_pb2.GenerateRequest) -> Reply:
        if self.reply_for is not None:
            return self.reply_for(request)
        return self.replies[min(len(self.calls) - 1, len(self.replies) - 1)]

    async def Generate(self, request: llm_pb2.GenerateRequest,
                       context: aio.ServicerContext) -> AsyncIterator[llm_pb2.GenerateResponse]:
        started = time.monotonic()
        request_id = request.request_id or uuid.uuid4().hex
        call = LlmCall(request=request)
        self.requests.append(request)
        self.calls.append(call)
        try:
            if not request.messages:
                call.end("failed", (grpc.StatusCode.INVALID_ARGUMENT, "no messages"))
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request has no messages")
            reply = call.reply = self._next_reply(request)
            await asyncio.sleep(reply.first_token_delay)
            if failure := as_failure(reply.fail_before_first, f"{reply.provider} failed before its first token"):
                call.end("failed", failure)
                await context.abort(*failure)
            first_token_at = time.monotonic() - started
            for position, token in enumerate(reply.tokens):
                if position == reply.fail_after:
                    call.end("failed", reply.fail_with)
                    await context.abort(*reply.fail_with)
                if position == reply.hold_after:
                    await self._release.wait()
                if position:
                    await asyncio.sleep(reply.token_delay)
                call.tokens_sent += 1  # counted before the yield: the client may cancel while it waits
                yield llm_pb2.GenerateResponse(request_id=request_id, delta=llm_pb2.TextDelta(text=token))
            if reply.fail_after is not None and reply.fail_after >= len(reply.tokens):
                call.end("failed", reply.fail_with)
                await context.abort(*reply.fail_with)
            prompt = sum(_words(m.content) for m in request.messages)
            done = llm_pb2.GenerationDone(
                finish_reason=reply.finish_reason, provider=reply.provider, model=reply.model,
                fallbacks=[llm_pb2.ProviderFallback(provider=p, reason=r) for p, r in reply.fallbacks],
                time_to_first_token_seconds=first_token_at, total_seconds=time.monotonic() - started,
                language_code=request.language_code or "en",
                usage=llm_pb2.TokenUsage(prompt_tokens=prompt, completion_tokens=len(reply.tokens)))
            call.end("ok")  # before the yield: a client that cancels once it has `done` got the whole answer
            yield llm_pb2.GenerateResponse(request_id=request_id, done=done)
        except (asyncio.CancelledError, GeneratorExit):
            call.end(self.interrupted_outcome())
            raise
        except Exception as exc:  # aborts were recorded already; anything else is a bug in the fake
            call.end("failed", (grpc.StatusCode.INTERNAL, repr(exc)))
            raise

    async def ListModels(self, request: llm_pb2.ListModelsRequest,
                         context: aio.ServicerContext) -> llm_pb2.ListModelsResponse:
        seen = dict.fromkeys((r.provider, r.model) for r in self.replies)
        return llm_pb2.ListModelsResponse(models=[
            llm_pb2.ModelInfo(provider=p, model=m, available=True, detail="scripted") for p, m in seen])
