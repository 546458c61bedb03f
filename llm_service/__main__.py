"""`python -m llm_service`: streamed answers behind the LanguageModel gRPC service (Groq, a local GGUF model,
or an OpenAI-compatible endpoint, tried in the configured order)."""

from __future__ import annotations

import asyncio
import logging

from grpc import aio

from llm_service.local_model import LocalModel, resolve_model
from llm_service.prompting import system_prompt
from llm_service.providers import GroqProvider, OpenAICompatibleProvider, Provider
from llm_service.server import LanguageModelService
from llm_service.settings import LlmSettings
from voicebus.grpc_server import run_service, start_process
from voicebus.packaged_models import ModelNotInstalled
from voicebus.v1 import llm_pb2, llm_pb2_grpc

log = logging.getLogger("llm_service")

PROVIDER_NAMES = ("groq", "local", "openai")


def build_providers(settings: LlmSettings) -> list[Provider]:
    """The configured providers, in order; the local model is loaded here, once."""
    names = [n.strip().lower() for n in settings.llm_providers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROVIDER_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise SystemExit(f"llm: VOICEBUS_LLM_PROVIDERS={settings.llm_providers!r} is not valid: list each of "
                         f"{', '.join(PROVIDER_NAMES)} at most once, in the order to try them")
    providers: list[Provider] = []
    for name in names:
        if name == "groq":
            key = settings.groq_api_key.get_secret_value() if settings.groq_api_key else None
            models = [m.strip() for m in settings.groq_models.split(",") if m.strip()]
            providers.append(GroqProvider(key, settings.groq_base_url, models, settings.groq_timeout_seconds))
        elif name == "openai":
            provider = OpenAICompatibleProvider(
                "openai", settings.openai_base_url or "http://unset", [settings.openai_model],
                settings.openai_api_key.get_secret_value() if settings.openai_api_key else None)
            if not settings.openai_base_url:
                provider.unavailable_reason = "no endpoint (set VOICEBUS_OPENAI_BASE_URL)"
            providers.append(provider)
        else:
            try:
                model_name, path = resolve_model(settings.llm_local_model, settings.data_dir)
                local = LocalModel(model_name, path, threads=settings.llm_threads,
                                   context_tokens=settings.llm_context_tokens,
                                   reuse_prefix=settings.llm_reuse_prompt_prefix,
                                   prompt_cache_mib=settings.llm_prompt_cache_mib,
                                   parallel=settings.llm_parallel,
                                   draft=resolve_model(settings.llm_draft_model, settings.data_dir)[1]
                                   if settings.llm_draft_model else None)
            except ModelNotInstalled as exc:
                raise SystemExit(f"llm: {exc} (or leave `local` out of VOICEBUS_LLM_PROVIDERS)") from None
            # the start shared by every language's default prompt
            local.warm_up(system_prompt("en", settings.llm_system_prompt))
            providers.append(local)
    for provider in providers:
        if provider.unavailable_reason:
            log.warning("provider %s skipped: %s", provider.name, provider.unavailable_reason,
                        extra={"fields": {"provider": provider.name, "reason": provider.unavailable_reason}})
    return providers


def main() -> None:
    settings = LlmSettings()
    start_process(settings)
    providers = build_providers(settings)
    service = LanguageModelService(settings, providers)

    def register(server: aio.Server) -> list[str]:
        llm_pb2_grpc.add_LanguageModelServicer_to_server(service, server)
        return [llm_pb2.DESCRIPTOR.services_by_name["LanguageModel"].full_name]

    async def close_providers() -> None:
        for provider in providers:
            await provider.close()

    ready = [p.name for p in providers if not p.unavailable_reason]
    asyncio.run(run_service(settings=settings, address=settings.llm_addr, register=register,
                            capabilities=ready, on_shutdown=close_providers))


if __name__ == "__main__":
    main()
