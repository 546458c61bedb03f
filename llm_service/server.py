"""The LanguageModel gRPC service: checks the request, builds the prompt, then tries the
providers in order until one starts answering, and streams its deltas.

A provider that fails before its first token is replaced by the next one within the
same request (listed in `done.fallbacks`). Once text has been sent, a failure ends the
stream with an error status: two providers' answers are never spliced together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc
from grpc import aio
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from llm_service.capabilities import cannot_do, unsupported_request
from llm_service.local_model import LocalModel
from llm_service.prompting import Message, TokenCounter, estimate_tokens, system_prompt, trim_history
from llm_service.providers import Completion, Provider, ProviderError, Sampling
from llm_service.run_on import RunOnGuard
from llm_service.settings import LlmSettings
from voicebus.language import answer_language
from voicebus.logs import request_id_var
from voicebus.metrics import FALLBACKS, LLM_FIRST_TOKEN_SECONDS, LLM_GENERATIONS
from voicebus.telemetry import tracer
from voicebus.v1 import common_pb2, llm_pb2, llm_pb2_grpc

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

_ROLES = {common_pb2.ROLE_SYSTEM: "system", common_pb2.ROLE_USER: "user", common_pb2.ROLE_ASSISTANT: "assistant"}
_FINISH = {"stop": llm_pb2.FINISH_REASON_STOP, "length": llm_pb2.FINISH_REASON_LENGTH,
           "sentences": llm_pb2.FINISH_REASON_LENGTH, "repeated": llm_pb2.FINISH_REASON_REPETITION}


class BadRequest(Exception):
    """The request cannot be served as sent (INVALID_ARGUMENT); the message says why."""


@dataclass
class Plan:
    """A checked request: what to send, to whom, and how."""
    messages: list[Message]
    language: str
    chain: list[tuple[Provider, str]]  # (provider, model) in the order to try
    sampling: Sampling
    budget: int
    fallbacks: list[llm_pb2.ProviderFallback] = field(default_factory=list)
    cannot_do: str = ""  # the whole answer, when the user asks for an action Voicebus cannot take


class LanguageModelService(llm_pb2_grpc.LanguageModelServicer):
    def __init__(self, settings: LlmSettings, providers: Sequence[Provider]) -> None:
        self.settings = settings
        self.providers = list(providers)
        self.local = next((p for p in providers if isinstance(p, LocalModel)), None)

    # -- checking the request ------------------------------------------------

    def _messages(self, request: llm_pb2.GenerateRequest) -> list[Message]:
        s = self.settings
        if not request.messages:
            raise BadRequest("messages is empty: send at least the user's message")
        if len(request.messages) > s.llm_max_messages:
            raise BadRequest(f"{len(request.messages)} messages is over the limit of {s.llm_max_messages}")
        messages: list[Message] = []
        for index, message in enumerate(request.messages):
            role = _ROLES.get(message.role)
            if role is None:
                raise BadRequest(f"messages[{index}] has no role (set ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT)")
            if len(message.content) > s.llm_max_message_chars:
                raise BadRequest(f"messages[{index}] is {len(message.content)} characters long, over the limit "
                                 f"of {s.llm_max_message_chars}")
            if role == "system" and messages and messages[-1].role != "system":
                raise BadRequest(f"messages[{index}] is a system message after the conversation started; "
                                 "system messages go first")
            messages.append(Message(role, message.content))
        if messages[-1].role != "user":
            raise BadRequest(f"the last message is from the {messages[-1].role}; it must be the user's newest turn")
        if not messages[-1].content.strip():
            raise BadRequest("the user's message is empty")
        # An interrupted turn may leave an empty assistant message in the history: skip it.
        return [m for m in messages[:-1] if m.content.strip()] + messages[-1:]

    def _chain(self, request: llm_pb2.GenerateRequest) -> list[tuple[Provider, str]]:
        providers = self.providers
        if request.provider:
            providers = [p for p in providers if p.name == request.provider]
            if not providers:
                raise BadRequest(f"unknown provider '{request.provider[:40]}'; this server has: "
                                 f"{', '.join(p.name for p in self.providers)}")
        if not request.model:
            return [(p, p.models[0]) for p in providers]
        chain = [(p, request.model) for p in providers if request.model in p.models]
        if not chain:
            known = "; ".join(f"{p.name}: {', '.join(p.models)}" for p in providers)
            raise BadRequest(f"unknown model '{request.model[:40]}'; available: {known}")
        return chain

    def _sampling(self, request: llm_pb2.GenerateRequest) -> Sampling:
        s = self.settings
        if request.max_tokens < 0:
            raise BadRequest(f"max_tokens must not be negative (got {request.max_tokens})")
        max_tokens = request.max_tokens or s.llm_max_tokens
        if max_tokens > s.llm_context_tokens // 2:
            raise BadRequest(f"max_tokens {max_tokens} is over the limit of {s.llm_context_tokens // 2}")
        temperature = request.temperature if request.HasField("temperature") else s.llm_temperature
        if not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
            raise BadRequest(f"temperature must be between 0 and 2 (got {temperature})")
        return Sampling(max_tokens=max_tokens, temperature=temperature)

    def plan(self, request: llm_pb2.GenerateRequest) -> Plan:
        messages = self._messages(request)
        chain = self._chain(request)
        sampling = self._sampling(request)
        if request.history_token_budget < 0:
            raise BadRequest(f"history_token_budget must not be negative (got {request.history_token_budget})")
        # The prompt and the answer must fit the local model's context window.
        budget = min(request.history_token_budget or self.settings.llm_history_token_budget,
                     self.settings.llm_context_tokens - sampling.max_tokens - 16)
        language = answer_language(request.language_code, messages[-1].content)
        plan = Plan(messages, language, chain, sampling, budget)
        if messages[0].role != "system":  # a client's own system prompt may give the model tools
            messages.insert(0, Message("system", system_prompt(language, self.settings.llm_system_prompt)))
            if kind := unsupported_request(messages[-1].content):
                plan.cannot_do = cannot_do(kind, language)
        return plan

    # -- serving --------------------------------------------------------------

    async def Generate(self, request: llm_pb2.GenerateRequest,
                       context: aio.ServicerContext) -> AsyncIterator[llm_pb2.GenerateResponse]:
        request_id = request.request_id or uuid.uuid4().hex
        request_id_var.set(request_id)
        try:
            async with contextlib.aclosing(self._generate(request, request_id, context)) as responses:
                async for response in responses:
                    yield response
        except (aio.AbortError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # a bug: say so in words, keep the trace in the log only
            log.exception("generate failed")
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal error in the llm service ({exc.__class__.__name__}); see its log")

    async def _generate(self, request: llm_pb2.GenerateRequest, request_id: str,
                        context: aio.ServicerContext) -> AsyncIterator[llm_pb2.GenerateResponse]:
        started = time.monotonic()
        try:
            plan = self.plan(request)
        except BadRequest as exc:
            log.info("bad request", extra={"fields": {"reason": str(exc)}})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # One span for the whole generation (attributes: who answered, tokens); a child span per
        # provider tried, up to its first token, so a slow or failing provider shows as such.
        span = _tracer.start_span("llm.generate", attributes={
            "llm.language": plan.language, "llm.messages": len(plan.messages),
            "llm.max_tokens": plan.sampling.max_tokens})
        if plan.cannot_do:
            span.set_attributes({"llm.provider": "voicebus", "llm.outcome": "completed"})
            span.end()
            log.info("answered an unsupported request", extra={"fields": {"answer": plan.cannot_do}})
            yield llm_pb2.GenerateResponse(request_id=request_id, delta=llm_pb2.TextDelta(text=plan.cannot_do))
            yield llm_pb2.GenerateResponse(request_id=request_id, done=llm_pb2.GenerationDone(
                finish_reason=llm_pb2.FINISH_REASON_STOP, provider="voicebus", model="capabilities",
                total_seconds=time.monotonic() - started, language_code=plan.language))
            return
        try:
            async with contextlib.aclosing(self._answer(plan, started, request_id, context, span)) as responses:
                async for response in responses:
                    yield response
        except aio.AbortError:
            span.set_status(Status(StatusCode.ERROR, "aborted"))
            raise
        finally:
            span.end()

    async def _answer(self, plan: Plan, started: float, request_id: str, context: aio.ServicerContext,
                      span: Span) -> AsyncIterator[llm_pb2.GenerateResponse]:
        count: TokenCounter = self.local.count_tokens if self.local else estimate_tokens
        try:
            trimmed = await trim_history(plan.messages, plan.budget, count)
        except (OSError, ValueError, KeyError) as exc:  # httpx errors are OSErrors; an estimate still works
            log.warning("token counting failed, estimating", extra={"fields": {"error": str(exc)}})
            trimmed = await trim_history(plan.messages, plan.budget, estimate_tokens)
        if trimmed.dropped:
            log.info("history trimmed", extra={"fields": {"dropped_messages": trimmed.dropped,
                                                          "prompt_tokens": trimmed.prompt_tokens}})
        span.set_attribute("llm.history_dropped", trimmed.dropped)

        for position, (provider, model) in enumerate(plan.chain):
            if provider.unavailable_reason:
                self._skip(plan, provider, provider.unavailable_reason, span)
                continue
            last = position == len(plan.chain) - 1
            timeout = None if last else self.settings.llm_first_token_timeout_seconds
            attempt = _tracer.start_span("llm.first_token", context=trace.set_span_in_context(span),
                                         attributes={"llm.provider": provider.name, "llm.model": model})
            stream = provider.stream(trimmed.messages, model, plan.sampling)
            try:
                async with asyncio.timeout(timeout):
                    first = await anext(stream)
            except (TimeoutError, ProviderError, StopAsyncIteration) as exc:
                await stream.aclose()
                reason = (f"no first token within {timeout:g} s" if isinstance(exc, TimeoutError)
                          else str(exc) if isinstance(exc, ProviderError) else "the stream ended without an answer")
                attempt.set_status(Status(StatusCode.ERROR, reason))
                attempt.end()
                self._skip(plan, provider, reason, span)
                continue
            except BaseException as exc:
                await stream.aclose()  # closing the stream stops the provider's work
                attempt.set_attribute("llm.outcome", "cancelled")
                attempt.end()
                if isinstance(exc, asyncio.CancelledError):
                    LLM_GENERATIONS.labels(provider.name, "cancelled").inc()
                    span.set_attribute("llm.outcome", "cancelled")
                    log.info("generation cancelled by the client before the first token",
                             extra={"fields": {"provider": provider.name, "model": model}})
                raise
            attempt.end()
            async with contextlib.aclosing(self._relay(provider, model, stream, first, plan, started,
                                                       request_id, context, span)) as responses:
                async for response in responses:
                    yield response
            return
        reasons = "; ".join(f"{f.provider}: {f.reason}" for f in plan.fallbacks) or "no provider configured"
        log.warning("no provider answered", extra={"fields": {"reasons": reasons}})
        span.set_attribute("llm.outcome", "failed")
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"no language model provider could answer ({reasons})")

    def _skip(self, plan: Plan, provider: Provider, reason: str, span: Span) -> None:
        plan.fallbacks.append(llm_pb2.ProviderFallback(provider=provider.name, reason=reason))
        configured = reason != provider.unavailable_reason
        span.add_event("fallback", {"llm.provider": provider.name, "reason": reason[:300], "configured": configured})
        if configured:  # an unconfigured provider is not a fallback, just not there
            FALLBACKS.labels(stage="llm", kind="provider").inc()
        # A provider that is not configured was warned about once at start; a failure is news.
        level = logging.WARNING if configured else logging.INFO
        log.log(level, "provider skipped", extra={"fields": {"provider": provider.name, "reason": reason}})

    async def _relay(self, provider: Provider, model: str, stream: AsyncIterator[str | Completion],
                     first: str | Completion, plan: Plan, started: float, request_id: str,
                     context: aio.ServicerContext, span: Span) -> AsyncIterator[llm_pb2.GenerateResponse]:
        first_token_at = time.monotonic() - started
        LLM_FIRST_TOKEN_SECONDS.labels(provider.name).observe(first_token_at)
        span.add_event("first_token")
        span.set_attributes({"llm.provider": provider.name, "llm.model": model,
                             "llm.first_token_seconds": first_token_at, "llm.fallbacks": len(plan.fallbacks)})
        deltas, item, outcome = 0, first, "failed"
        guard = RunOnGuard(self.settings.llm_max_sentences)
        try:
            try:
                while not isinstance(item, Completion):
                    if text := guard.push(item):
                        deltas += 1
                        yield llm_pb2.GenerateResponse(request_id=request_id, delta=llm_pb2.TextDelta(text=text))
                    if guard.stopped:
                        break
                    item = await anext(stream)
                if text := guard.finish():
                    deltas += 1
                    yield llm_pb2.GenerateResponse(request_id=request_id, delta=llm_pb2.TextDelta(text=text))
            except ProviderError as exc:
                # Text already went out: switching provider now would splice two answers.
                log.warning("provider failed mid-answer", extra={"fields": {
                    "provider": provider.name, "deltas_sent": deltas, "reason": str(exc)}})
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{provider.name} failed after the answer had "
                                    f"started ({deltas} pieces sent; the answer is incomplete): {exc}")
            outcome = "completed"
            if guard.stopped:  # the provider is stopped by closing its stream (finally)
                item = Completion(finish_reason=guard.stopped)  # usage unknown: the provider did not finish
                span.add_event("run_on_stopped", {"reason": guard.stopped, "sentences": guard.sentences})
            done = llm_pb2.GenerationDone(
                finish_reason=_FINISH[item.finish_reason], provider=provider.name, model=model,
                fallbacks=plan.fallbacks, time_to_first_token_seconds=first_token_at,
                total_seconds=time.monotonic() - started, language_code=plan.language,
                usage=llm_pb2.TokenUsage(prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens,
                                         cached_prompt_tokens=item.cached_prompt_tokens))
            log.info("generated", extra={"fields": {
                "provider": provider.name, "model": model, "first_token_seconds": round(first_token_at, 3),
                "total_seconds": round(done.total_seconds, 3), "prompt_tokens": item.prompt_tokens,
                "cached_prompt_tokens": item.cached_prompt_tokens, "completion_tokens": item.completion_tokens,
                "finish_reason": item.finish_reason, "fallbacks": [f.provider for f in plan.fallbacks]}})
            span.set_attributes({"llm.prompt_tokens": item.prompt_tokens,
                                 "llm.cached_prompt_tokens": item.cached_prompt_tokens,
                                 "llm.completion_tokens": item.completion_tokens,
                                 "llm.finish_reason": item.finish_reason})
            yield llm_pb2.GenerateResponse(request_id=request_id, done=done)
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            log.info("generation cancelled by the client", extra={"fields": {
                "provider": provider.name, "model": model, "deltas_sent": deltas}})
            raise
        finally:
            await stream.aclose()  # closing the stream stops the provider's generation
            LLM_GENERATIONS.labels(provider.name, outcome).inc()
            span.set_attribute("llm.outcome", outcome)
            if outcome == "failed":
                span.set_status(Status(StatusCode.ERROR, "the provider failed mid-answer"))

    async def ListModels(self, request: llm_pb2.ListModelsRequest,
                         context: aio.ServicerContext) -> llm_pb2.ListModelsResponse:
        models = []
        for provider in self.providers:
            for index, model in enumerate(provider.models):
                detail = provider.unavailable_reason or ("default" if index == 0 else "")
                if isinstance(provider, LocalModel):
                    detail = f"loaded from {provider.path}"
                models.append(llm_pb2.ModelInfo(provider=provider.name, model=model,
                                                available=provider.unavailable_reason is None, detail=detail))
        return llm_pb2.ListModelsResponse(models=models)


