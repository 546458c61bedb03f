"""Answer quality: the real LLM service on a free port answers the prompts of
bench/quality_prompts.jsonl over gRPC, as a typed turn would ask them (the service's system
prompt, its language rule and its run-on guard), and a machine scores each answer
(bench/quality_scoring.py).

    .venv/bin/python bench/quality.py [--model qwen2.5-0.5b] [--temperature 0] [--repeat 1]
        [--only facts,memory] [--limit N] [--env VOICEBUS_LLM_MAX_SENTENCES=3 ...] [--show-failures]

Prints per category: accuracy, reply language/script matching the user's, length
instructions obeyed, unspeakable replies and loops; then first-token and first-sentence
latency (p50/p95) and tokens per answer; and one JSON line with all of it. Any provider and
setting the service reads can be given with --env (e.g. VOICEBUS_LLM_PROVIDERS=groq with a
GROQ_API_KEY in the environment). The machine is shared: the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import grpc
from common import ROOT, NatsServer, ServiceProcess, free_port, percentile  # sets sys.path
from quality_scoring import Score, score

from voicebus.text import SentenceSplitter
from voicebus.v1 import common_pb2, llm_pb2, llm_pb2_grpc

PROMPTS = Path(__file__).with_name("quality_prompts.jsonl")
ROLES = {"user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT}


def load_prompts(only: set[str], limit: int) -> list[dict]:
    prompts = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    if only:
        prompts = [p for p in prompts if p["category"] in only]
    return prompts[:limit] if limit else prompts


def request_for(prompt: dict, temperature: float | None, max_tokens: int) -> llm_pb2.GenerateRequest:
    messages = []
    for user, assistant in prompt.get("history", []):
        messages += [common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=user),
                     common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content=assistant)]
    messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt["prompt"]))
    # A typed turn carries no language code: the service decides from the words.
    request = llm_pb2.GenerateRequest(request_id=prompt["id"], messages=messages, max_tokens=max_tokens)
    if temperature is not None:  # unset: the service's default
        request.temperature = temperature
    return request


async def ask(stub: llm_pb2_grpc.LanguageModelStub, request: llm_pb2.GenerateRequest) -> dict:
    started, text, first_token, first_sentence = time.monotonic(), "", 0.0, 0.0
    sentences = SentenceSplitter(first_clause_min_words=10**9)
    done = llm_pb2.GenerationDone()
    async for reply in stub.Generate(request, timeout=600):
        now = time.monotonic() - started
        if reply.WhichOneof("response") == "delta":
            text += reply.delta.text
            first_token = first_token or now
            if not first_sentence and sentences.push(reply.delta.text):
                first_sentence = now
        else:
            done = reply.done
            first_sentence = first_sentence or now
    return {"text": text.strip(), "first_token": first_token, "first_sentence": first_sentence,
            "tokens": done.usage.completion_tokens, "finish": llm_pb2.FinishReason.Name(done.finish_reason),
            "language_code": done.language_code}


def start_service(nats_url: str, model: str, env: dict[str, str]) -> ServiceProcess:
    port = free_port()
    service_env = {
        "VOICEBUS_LLM_ADDR": f"127.0.0.1:{port}", "VOICEBUS_NATS_URL": nats_url,
        # the stack's data folder: a model in parts is assembled there once, not per run
        "VOICEBUS_DATA_DIR": os.environ.get("VOICEBUS_DATA_DIR") or str(ROOT / "data"),
        "VOICEBUS_LLM_PROVIDERS": "local", "VOICEBUS_LLM_LOCAL_MODEL": model, "GROQ_API_KEY": "",
        "VOICEBUS_METRICS_PORT_OFFSET": "0", "VOICEBUS_LOG_LEVEL": "WARNING", **env}
    return ServiceProcess("llm_service", f"127.0.0.1:{port}", service_env, name="bench-quality").wait_healthy(900)


def report(results: list[tuple[dict, dict, Score]], label: str) -> dict:
    by_category: dict[str, list[tuple[dict, dict, Score]]] = defaultdict(list)
    for row in results:
        by_category[row[0]["category"]].append(row)
    pct = lambda rows, ok: 100 * sum(1 for r in rows if ok(r)) / max(1, len(rows))  # noqa: E731
    print(f"\n== {label}")
    print(f"{'category':<17}{'n':>4}{'correct':>9}{'language':>10}{'length':>8}{'unspeakable':>13}{'loops':>7}")
    summary: dict = {"label": label, "categories": {}}
    for category, rows in [*by_category.items(), ("all", results)]:
        lengths = [r for r in rows if r[2].length_ok is not None]
        line = {"n": len(rows), "correct": pct(rows, lambda r: r[2].correct),
                "language": pct(rows, lambda r: r[2].language_ok),
                "length": pct(lengths, lambda r: r[2].length_ok) if lengths else None,
                "unspeakable": sum(1 for r in rows if not r[2].speakable), "loops": sum(1 for r in rows if r[2].loop)}
        summary["categories"][category] = line
        length = f"{line['length']:.0f}%" if line["length"] is not None else "-"
        print(f"{category:<17}{line['n']:>4}{line['correct']:>8.0f}%{line['language']:>9.0f}%{length:>8}"
              f"{line['unspeakable']:>13}{line['loops']:>7}")
    answers = [r[1] for r in results]
    for key in ("first_token", "first_sentence"):
        values = [a[key] for a in answers]
        summary[key] = {"p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3)}
        print(f"{key.replace('_', ' '):<17} p50 {summary[key]['p50']:.3f} s  p95 {summary[key]['p95']:.3f} s")
    summary["tokens_per_answer"] = round(statistics.fmean(a["tokens"] for a in answers), 1)
    print(f"tokens per answer {summary['tokens_per_answer']:.1f} (0 when the run-on guard stopped it)")
    return summary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b", help="VOICEBUS_LLM_LOCAL_MODEL of the service")
    parser.add_argument("--temperature", type=float, default=None, help="per request; default: the service's")
    parser.add_argument("--max-tokens", type=int, default=0, help="per request; 0 = the service's default")
    parser.add_argument("--repeat", type=int, default=1, help="ask every prompt this many times")
    parser.add_argument("--only", default="", help="comma-separated categories")
    parser.add_argument("--limit", type=int, default=0, help="the first N prompts only")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a setting of the service")
    parser.add_argument("--show-failures", action="store_true", help="print every failed answer")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    prompts = load_prompts({c for c in args.only.split(",") if c}, args.limit)
    label = f"{args.model} temperature={args.temperature if args.temperature is not None else 'default'}" + \
        "".join(f" {k}={v}" for k, v in env.items())
    print(f"{len(prompts)} prompts x {args.repeat}, {label}, load average {os.getloadavg()[0]:.2f} at start")
    nats = NatsServer()
    service = start_service(nats.url, args.model, env)
    results = []
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = llm_pb2_grpc.LanguageModelStub(channel)
            for _ in range(args.repeat):
                for prompt in prompts:
                    request = request_for(prompt, args.temperature, args.max_tokens)
                    answer = await ask(stub, request)
                    scored = score(prompt, answer["text"], answer["finish"] == "FINISH_REASON_REPETITION")
                    results.append((prompt, answer, scored))
                    failed = [name for name, ok in (("wrong", scored.correct), ("language", scored.language_ok),
                                                    ("length", scored.length_ok is not False),
                                                    ("unspeakable", scored.speakable), ("loop", not scored.loop))
                              if not ok]
                    if failed and args.show_failures:
                        print(f"  {prompt['id']:<20} {'/'.join(failed):<22} {prompt['prompt']!r} -> {answer['text']!r}")
    finally:
        service.stop()
        nats.stop()
    summary = report(results, label)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print("JSON " + json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())
