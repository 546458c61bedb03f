"""A fixed slice of bench/quality.py against the default local model (Qwen2.5-Coder-0.5B) at
temperature 0: the real LLM service answers, bench/quality_scoring.py scores.

The slice: the first five prompts of the facts, arithmetic, memory and unsupported-request
categories, and three Devanagari Hindi and three English ones for the reply's language.
Measured at temperature 0 on this machine: 18 of 20 right (the model calls the whale the
fastest land animal and counts 5 continents). The threshold, 17 of 20, fails when the
system prompt, the history or the honest answer to requests breaks (each costs five), and
tolerates one answer flipping with llama.cpp's thread timing. The reply's script must match
for every Devanagari and English prompt (romanised Hindi is left to the benchmark: the
0.5B model answers it in kind only about half the time), and nothing but the Hindi may loop.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
import pytest

from helpers import ROOT, ServiceProcess, free_port

sys.path.insert(0, str(ROOT / "bench"))
from quality import PROMPTS, ask, request_for  # noqa: E402
from quality_scoring import score  # noqa: E402

from voicebus.v1 import llm_pb2_grpc  # noqa: E402

ANSWERED = ("facts", "arithmetic", "memory", "unsupported")
LANGUAGE_ONLY = ("hindi", "english")
MIN_CORRECT = 17


def sliced() -> list[dict]:
    prompts = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    taken = []
    for category, count in [*((c, 5) for c in ANSWERED), *((c, 3) for c in LANGUAGE_ONLY)]:
        taken += [p for p in prompts if p["category"] == category][:count]
    return taken


@pytest.fixture(scope="module")
def llm(nats_server, tmp_path_factory):
    port = free_port()
    env = {"VOICEBUS_LLM_ADDR": f"127.0.0.1:{port}", "VOICEBUS_NATS_URL": nats_server.url,
           "VOICEBUS_DATA_DIR": str(tmp_path_factory.mktemp("quality")), "VOICEBUS_LLM_PROVIDERS": "local",
           "VOICEBUS_LLM_LOCAL_MODEL": "qwen2.5-0.5b", "GROQ_API_KEY": "", "VOICEBUS_METRICS_PORT_OFFSET": "0"}
    proc = ServiceProcess("llm_service", f"127.0.0.1:{port}", env, name="quality-llm")
    try:
        proc.wait_healthy(300)
        yield proc
    finally:
        proc.stop()


async def test_a_fixed_slice_of_the_quality_benchmark(llm):
    rows = []
    async with grpc.aio.insecure_channel(llm.address) as channel:
        stub = llm_pb2_grpc.LanguageModelStub(channel)
        for prompt in sliced():
            answer = await ask(stub, request_for(prompt, temperature=0.0, max_tokens=0))
            rows.append((prompt, answer["text"], score(prompt, answer["text"],
                                                       answer["finish"] == "FINISH_REASON_REPETITION")))
    shown = "\n".join(f"{p['id']}: {p['prompt']!r} -> {text!r}" for p, text, _ in rows)
    answered = [s for p, _, s in rows if p["category"] in ANSWERED]
    assert len(answered) == 20
    assert sum(s.correct for s in answered) >= MIN_CORRECT, shown
    assert all(s.language_ok for _, _, s in rows), shown
    # The 0.5B model's Hindi starts to loop (the service stops it); only its script is asserted.
    assert all(s.speakable and not s.loop for p, _, s in rows if p["category"] != "hindi"), shown


@pytest.mark.parametrize("reply, language", [
    ("भारत की राजधानी नई दिल्ली है।", "hi"), ("Bharat ki rajdhani Dilli hai, aap jaante ho?", "hi-Latn"),
    ("The capital of India is New Delhi.", "en"), ("The capital is नई दिल्ली, in India's north.", "mixed"),
])
def test_the_benchmark_tells_the_replys_language_and_script(reply, language):
    assert score({"accept": [], "language": language}, reply).language_ok


def test_the_benchmark_catches_wrong_claimed_unspeakable_and_looping_replies():
    prompt = {"accept": [r"\bseven\b", r"\b7\b"], "language": "en", "sentences": 1}
    assert score(prompt, "There are seven continents.").correct
    assert not score(prompt, "There are 5 continents.").correct
    assert not score(prompt, "There are seven. Asia is the largest.").length_ok
    refuse = {"accept": [], "language": "en", "refuse": True}
    assert score(refuse, "Sorry, I can't set timers: I can only talk.").correct
    assert not score(refuse, "Sure, I'll set a timer for ten minutes.").correct
    assert not score(refuse, "Sure, I can set a timer for ten minutes.").correct
    assert not score(prompt, "1. Sleep early.\n2. No screens.").speakable
    assert not score(prompt, "See **this** at https://example.com").speakable
    assert score(prompt, "It rains. It rains. It rains.").loop
    assert score(prompt, "भारत है जान्या जान्या जान्या जान्या जान्या जान्या").loop
    assert not score(prompt, "I like the sea. I like the mountains too.").loop
