"""LLM benchmark: the real service (`local` provider only) on a free port, over gRPC.

    .venv/bin/python bench/llm.py [--model qwen2.5-0.5b] [--questions 6] [--threads 2]

1. Single questions (default system prompt, max 128 tokens): time to first token, time to
   the first speakable piece and to the first whole sentence (what the orchestrator sends
   to TTS, cut by voicebus.text.SentenceSplitter), and generation speed in tokens/s
   (completion tokens / (total - first token)). The service warms up at start (one tiny
   request with the default system prompt), so even the first question finds it cached.
2. A 5-turn conversation, each turn carrying the whole history so far (the previous
   answers are the model's own), run twice on the same model: with prompt-prefix reuse
   (the default) and with it off (VOICEBUS_LLM_REUSE_PROMPT_PREFIX=false). Per turn: prompt
   tokens, tokens served from the cache, and time to first token.

The machine is shared and has 2 cores: the load average is printed with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

import grpc
from common import NatsServer, ServiceProcess, free_port, summary  # sets sys.path

from voicebus.text import SentenceSplitter, split_sentences
from voicebus.v1 import common_pb2, llm_pb2, llm_pb2_grpc

QUESTIONS = [
    "Why is the sky blue?",
    "How do plants make their food?",
    "What causes the seasons on Earth?",
    "Why do we need to sleep?",
    "How does a refrigerator keep food cold?",
    "What is the difference between weather and climate?",
    "Why does the moon change its shape?",
    "How do vaccines work?",
]
CONVERSATION = [
    "I want to start running. How should I begin?",
    "How many times a week should I run at first?",
    "What should I eat before a run?",
    "My knees hurt a little after running. What can I do?",
    "Can you summarise your advice in two sentences?",
]


class Measured:
    def __init__(self) -> None:
        self.text = ""
        self.first_token = self.first_piece = self.first_sentence = self.total = 0.0
        self.done = llm_pb2.GenerationDone()


async def measure(stub: llm_pb2_grpc.LanguageModelStub, messages: list[common_pb2.ChatMessage],
                  max_tokens: int = 128) -> Measured:
    result, pieces, sentences = Measured(), SentenceSplitter(), SentenceSplitter(first_clause_min_words=10**9)
    started = time.monotonic()
    request = llm_pb2.GenerateRequest(messages=messages, language_code="en", max_tokens=max_tokens, temperature=0.0)
    async for reply in stub.Generate(request, timeout=600):
        now = time.monotonic() - started
        if reply.WhichOneof("response") == "delta":
            result.text += reply.delta.text
            result.first_token = result.first_token or now
            if not result.first_piece and pieces.push(reply.delta.text):
                result.first_piece = now
            if not result.first_sentence and sentences.push(reply.delta.text):
                result.first_sentence = now
        else:
            result.done, result.total = reply.done, now
    # An answer of one sentence completes only at the end of the stream.
    result.first_piece = result.first_piece or result.total
    result.first_sentence = result.first_sentence or result.total
    return result


def start_service(nats_url: str, data_dir: str, model: str, threads: int, reuse: bool) -> ServiceProcess:
    port = free_port()
    env = {"VOICEBUS_LLM_ADDR": f"127.0.0.1:{port}", "VOICEBUS_NATS_URL": nats_url, "VOICEBUS_DATA_DIR": data_dir,
           "VOICEBUS_LLM_PROVIDERS": "local", "VOICEBUS_LLM_LOCAL_MODEL": model, "GROQ_API_KEY": "",
           "VOICEBUS_LLM_THREADS": str(threads), "VOICEBUS_METRICS_PORT_OFFSET": "0",
           "VOICEBUS_LLM_REUSE_PROMPT_PREFIX": "true" if reuse else "false", "VOICEBUS_LOG_LEVEL": "WARNING"}
    return ServiceProcess("llm_service", f"127.0.0.1:{port}", env, name="bench-llm").wait_healthy(600)


async def single_questions(stub: llm_pb2_grpc.LanguageModelStub, count: int) -> None:
    runs = [await measure(stub, [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=q)])
            for q in QUESTIONS[:count]]
    first, warm = runs[0], runs[1:]
    print(f"first question after start: first token {first.first_token:.3f}s, "
          f"prompt {first.done.usage.prompt_tokens} tokens, cached {first.done.usage.cached_prompt_tokens}")
    print(summary("first token", [r.first_token for r in warm]))
    print(summary("first speakable piece (clause or sentence)", [r.first_piece for r in warm]))
    print(summary("first whole sentence", [r.first_sentence for r in warm]))
    print(summary("whole answer", [r.total for r in warm]))
    speeds = [r.done.usage.completion_tokens / (r.total - r.first_token) for r in warm if r.total > r.first_token]
    print(summary("generation speed", speeds, " tok/s"))
    print(f"answer length: mean {statistics.fmean(r.done.usage.completion_tokens for r in warm):.0f} tokens, "
          f"{statistics.fmean(len(split_sentences(r.text)) for r in warm):.1f} sentences")
    print(f"example: {warm[0].text!r}")


async def conversation(stub: llm_pb2_grpc.LanguageModelStub) -> list[Measured]:
    history: list[common_pb2.ChatMessage] = []
    turns = []
    for question in CONVERSATION:
        history.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=question))
        turn = await measure(stub, history, max_tokens=96)
        history.append(common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content=turn.text))
        turns.append(turn)
    return turns


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="VOICEBUS_LLM_LOCAL_MODEL for the service")
    parser.add_argument("--questions", type=int, default=6, help="single questions (the first is reported apart)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    nats = NatsServer()
    data_dir = os.environ.get("VOICEBUS_DATA_DIR") or tempfile.mkdtemp(prefix="bench-llm-")
    print(f"model {args.model}, {args.threads} threads, load average {os.getloadavg()[0]:.2f} at start")
    results: dict[bool, list[Measured]] = {}
    try:
        for reuse in (True, False):
            service = start_service(nats.url, data_dir, args.model, args.threads, reuse)
            try:
                async with grpc.aio.insecure_channel(service.address) as channel:
                    stub = llm_pb2_grpc.LanguageModelStub(channel)
                    if reuse:
                        print("\n== single questions")
                        await single_questions(stub, max(2, args.questions))
                    await measure(stub, [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Hello!")], 8)
                    results[reuse] = await conversation(stub)
            finally:
                service.stop()
    finally:
        nats.stop()

    print("\n== 5-turn conversation: time to first token per turn, prefix reuse on vs off")
    print(f"{'turn':<5}{'prompt tok':>11}{'cached on':>10}{'ttft on':>10}{'cached off':>11}{'ttft off':>10}")
    for index, (on, off) in enumerate(zip(results[True], results[False]), 1):
        print(f"{index:<5}{on.done.usage.prompt_tokens:>11}{on.done.usage.cached_prompt_tokens:>10}"
              f"{on.first_token:>9.3f}s{off.done.usage.cached_prompt_tokens:>11}{off.first_token:>9.3f}s")
    on_total = sum(t.first_token for t in results[True])
    off_total = sum(t.first_token for t in results[False])
    print(f"sum of first-token times: {on_total:.2f}s with reuse, {off_total:.2f}s without "
          f"({off_total / on_total:.1f}x)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    asyncio.run(main())
