"""Faults outside the orchestrator, as a user meets them: a service killed and started again,
and a child of `voicebus up` killed.

Recovery is asserted as success, never as time: the first turn after a restarted service
answers its health check must succeed (bench/load.py and the README give the times).
"""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import threading
import time

import grpc
import httpx
import pytest

from gateway_stack import AUTH, start_stack
from helpers import ServiceProcess, VoicebusUp, free_port, word_error_rate
from stt_support import SENTENCES, pcm_chunks, pcm_config, run_stream, speech
from voicebus.v1 import stt_pb2_grpc

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
# Long enough that gRPC's default backoff (1 s growing 1.6x per failed attempt, up to 120 s)
# would leave a channel several seconds away from its next attempt once the service is back.
OUTAGE_SECONDS = 12.0


@pytest.fixture(scope="module")
def stack(nats_server):
    stops: list = []
    try:
        yield start_stack(nats_server.url, stops)
    finally:
        for stop in stops:
            stop()


def chat(base: str, text: str = QUESTION, timeout: float = 120.0) -> httpx.Response:
    return httpx.post(f"{base}/api/chat", json={"text": text}, headers=AUTH, timeout=timeout)


def summary(response: httpx.Response) -> str:
    """A response for an assertion message, without its base64 audio."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.text[:500]}"
    if isinstance(body, dict) and body.get("audio_output"):
        body = {**body, "audio_output": f"<{len(body['audio_output'])} base64 chars>"}
    return f"{response.status_code} {body}"


def restart(stack, name: str) -> ServiceProcess:
    """Start the service again on its address, as its supervisor would, and wait until a
    fresh health check says SERVING: from then on the stack must serve."""
    old = stack.procs[name]
    module = "orchestrator" if name == "orchestrator" else f"{name}_service"
    stack.procs[name] = ServiceProcess(module, old.address, stack.env, name=f"{old.name}-restarted")
    return stack.procs[name].wait_healthy()


@pytest.mark.parametrize("name", ["llm", "tts", "orchestrator"])
def test_the_first_turn_after_a_restarted_service_is_healthy_succeeds(stack, name):
    first = chat(stack.base)
    assert first.status_code == 200 and first.json()["outcome"] == "completed", summary(first)

    stack.procs[name].stop(signal.SIGKILL)
    # Turns during the outage fail or degrade (their channels now back off), and /readyz says so.
    end = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < end:
        during = chat(stack.base, timeout=60)
        assert during.status_code in (200, 503), summary(during)
        ready = httpx.get(f"{stack.base}/readyz", timeout=30)
        assert ready.status_code == 503, ready.text
        assert ready.json()["services"][name]["status"] != "SERVING", ready.json()
        time.sleep(1.0)

    restart(stack, name)
    after = chat(stack.base)
    assert after.status_code == 200, summary(after)
    turn = after.json()
    assert turn["outcome"] == "completed", summary(after)
    assert turn["response"].strip() and turn["audio_output"], summary(after)
    assert not turn["degraded"], summary(after)
    ready = httpx.get(f"{stack.base}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text


# ---------------------------------------------------------------- load

def test_eight_spoken_turns_ending_together_are_all_heard(nats_server, tmp_path):
    """Eight push-to-talk utterances released at the same moment on one STT instance with
    the default queue (4 places): every one gets its final, none is RESOURCE_EXHAUSTED."""
    address = f"127.0.0.1:{free_port()}"
    service = ServiceProcess("stt_service", address, {
        "VOICEBUS_STT_ADDR": address, "VOICEBUS_NATS_URL": nats_server.url, "VOICEBUS_DATA_DIR": str(tmp_path),
        "VOICEBUS_STT_MAX_QUEUE": "4"}, name="stt-eight").wait_healthy()
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(8)]
    audio = {text: speech(text, tmp_path, f"s{i}")[1] for i, text in enumerate(SENTENCES)}
    together = threading.Barrier(len(texts))
    try:
        with grpc.insecure_channel(address) as channel:
            stub = stt_pb2_grpc.SpeechToTextStub(channel)

            def utterance(text: str):
                together.wait()  # every stream sends its speech and lets go of the button at once
                return run_stream(stub, pcm_config(interim_results=False), pcm_chunks(audio[text], 0.1),
                                  interval=0, timeout=120)

            with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
                runs = list(pool.map(utterance, texts))  # an RpcError (RESOURCE_EXHAUSTED) fails here
        for text, run in zip(texts, runs):
            finals = run.finals()
            assert len(finals) == 1, run.kinds()
            assert word_error_rate(text, finals[0].transcript.text) <= 0.2, (text, finals[0].transcript.text)
    finally:
        service.stop()


# ---------------------------------------------------------------- voicebus up supervises its children

def child_pids(up: VoicebusUp) -> dict[str, int]:
    """The service each direct child of `voicebus up` runs, by pid."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(up.proc.pid)], capture_output=True,
                         text=True).stdout  # exit code 1: no children (the stack has stopped)
    pids = {}
    for line in out.splitlines():
        pid, args = line.strip().split(maxsplit=1)
        for name, marker in (("stt", "-m stt_service"), ("llm", "-m llm_service"), ("tts", "-m tts_service"),
                             ("orchestrator", "-m orchestrator"), ("gateway", "-m web_gateway"),
                             ("nats", "nats-server")):
            if marker in args:
                pids[name] = int(pid)
    return pids


def wait_for_log(up: VoicebusUp, text: str, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = up.log_path.read_text(errors="replace")
        if text in log:
            return log
        assert up.proc.poll() is None, f"voicebus up exited ({up.proc.returncode}):\n{log[-3000:]}"
        time.sleep(0.2)
    raise TimeoutError(f"{text!r} not in {up.log_path} after {timeout:g} s")


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    stack = VoicebusUp("recovery", tmp_path_factory.mktemp("up-data"), {
        "VOICEBUS_LLM_PROVIDERS": "local", "VOICEBUS_LLM_LOCAL_MODEL": "smollm2-135m",
        "VOICEBUS_AUTH_TOKEN": AUTH["Authorization"].removeprefix("Bearer ")})
    yield stack
    if stack.proc.poll() is None:
        stack.stop()


def test_voicebus_up_restarts_a_killed_child_and_serves_again(up):
    before = child_pids(up)
    assert set(before) == {"nats", "stt", "llm", "tts", "orchestrator", "gateway"}, before
    subprocess.run(["kill", "-9", str(before["tts"])], check=True)

    log = wait_for_log(up, "voicebus: tts is serving again (restart 1)")
    assert "voicebus: tts died with exit code -9; restarting it in 0.5 s" in log
    assert "voicebus: ready again" in wait_for_log(up, "voicebus: ready again")
    assert "Stopping the stack" not in log and up.proc.poll() is None
    after = child_pids(up)
    assert after["tts"] != before["tts"]
    assert {k: v for k, v in after.items() if k != "tts"} == {k: v for k, v in before.items() if k != "tts"}

    turn = chat(f"http://{up.address('gateway')}")
    assert turn.status_code == 200, summary(turn)
    assert turn.json()["outcome"] == "completed" and turn.json()["audio_output"], summary(turn)


def test_voicebus_up_stops_when_a_child_is_caught_in_a_crash_loop(up):
    """Last in this module: it ends the stack."""
    killed: set[int] = set()
    deadline = time.monotonic() + 120
    while up.proc.poll() is None and time.monotonic() < deadline:
        pid = child_pids(up).get("llm")
        if pid and pid not in killed:
            subprocess.run(["kill", "-9", str(pid)], check=False)
            killed.add(pid)
        time.sleep(0.05)
    assert up.proc.wait(90) == 1
    log = up.log_path.read_text(errors="replace")
    assert "voicebus: llm died 5 times within 60 s (last exit code -9)" in log, log[-3000:]
    assert "Stopping the stack" in log and "voicebus: stopped" in log
    assert len(killed) >= 5  # the first and its four restarts
