"""Failover and degraded answers: a killed STT instance, TTS down, every LLM provider failing."""

from __future__ import annotations

import asyncio
import signal
import wave

import grpc
import pytest

from helpers import ServiceProcess, espeak_wav, free_port, words
from test_orchestrator import pcm_config, service_env
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc, audio_pb2


@pytest.fixture(scope="module")
def services(nats_server, tmp_path_factory):
    ports = {name: free_port() for name in ("stt", "stt2", "llm", "tts", "orchestrator")}
    env = service_env(nats_server.url, str(tmp_path_factory.mktemp("failover-data")), ports)
    procs = {
        "stt": ServiceProcess("stt_service", env["VOICEBUS_STT_ADDR"], env, name="stt-a"),
        # A second STT instance nobody configured: the orchestrator learns it from its heartbeats.
        "stt2": ServiceProcess("stt_service", f"127.0.0.1:{ports['stt2']}",
                               {**env, "VOICEBUS_STT_ADDR": f"127.0.0.1:{ports['stt2']}"}, name="stt-b"),
        "llm": ServiceProcess("llm_service", env["VOICEBUS_LLM_ADDR"], env, name="llm"),
        "tts": ServiceProcess("tts_service", env["VOICEBUS_TTS_ADDR"], env, name="tts"),
        "orchestrator": ServiceProcess("orchestrator", env["VOICEBUS_ORCHESTRATOR_ADDR"], env),
    }
    try:
        for proc in procs.values():
            proc.wait_healthy()
        yield {"env": env, "ports": ports, "procs": procs}
    finally:
        for proc in procs.values():
            proc.stop()


def isolated_orchestrator(services, tmp_path, **overrides: str) -> ServiceProcess:
    """An orchestrator with its own SQLite and no NATS (so it discovers no other instance)."""
    address = f"127.0.0.1:{free_port()}"
    env = {**services["env"], "VOICEBUS_ORCHESTRATOR_ADDR": address, "VOICEBUS_DATA_DIR": str(tmp_path),
           "VOICEBUS_NATS_URL": f"nats://127.0.0.1:{free_port()}", **overrides}
    return ServiceProcess("orchestrator", address, env, name="orchestrator-isolated").wait_healthy()


async def converse_text(address: str, text: str) -> list[assistant_pb2.ConverseResponse]:
    async def requests():
        yield pcm_config(16000)
        yield assistant_pb2.ConverseRequest(text=text)

    async with grpc.aio.insecure_channel(address) as channel:
        return [e async for e in assistant_pb2_grpc.AssistantStub(channel).Converse(requests(), timeout=120)]


async def test_killed_stt_instance_mid_conversation(services, tmp_path):
    # Both instances must be known before one dies: wait for the orchestrator to log the second
    # one's heartbeat (a fixed 1.5 s sleep raced a busy machine).
    def second_known() -> bool:
        return any("instance joined" in line and f':{services["ports"]["stt2"]}"' in line
                   for line in services["procs"]["orchestrator"].logs().splitlines())
    for _ in range(600):
        if second_known():
            break
        await asyncio.sleep(0.1)
    assert second_known(), "the orchestrator never heard the second STT's heartbeat"
    path = espeak_wav("What is the capital of France?", tmp_path / "q.wav", speed=170)
    with wave.open(str(path)) as w:
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
    events: list[assistant_pb2.ConverseResponse] = []

    async def requests():
        yield pcm_config(rate)
        step = rate // 10 * 2
        for n, i in enumerate(range(0, len(pcm), step)):
            if n == 5:  # half a second in: one STT instance dies without a word
                services["procs"]["stt"].proc.send_signal(signal.SIGKILL)
            yield assistant_pb2.ConverseRequest(audio=pcm[i:i + step])
            await asyncio.sleep(0.03)
        yield assistant_pb2.ConverseRequest(end_of_audio=assistant_pb2.EndOfAudio())

    async with grpc.aio.insecure_channel(services["env"]["VOICEBUS_ORCHESTRATOR_ADDR"]) as channel:
        stub = assistant_pb2_grpc.AssistantStub(channel)
        async for event in stub.Converse(requests(), timeout=120):
            events.append(event)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "turn_completed", [(k, e.error.message) for k, e in zip(kinds, events) if k == "error"]
    final = next(e.transcript.text for e in events if e.WhichOneof("event") == "transcript" and e.transcript.is_final)
    assert {"capital", "france"} <= set(words(final))
    assert "error" not in kinds


async def test_tts_down_gives_text_with_a_degraded_event(services, tmp_path):
    orchestrator = isolated_orchestrator(services, tmp_path, VOICEBUS_TTS_ADDR=f"127.0.0.1:{free_port()}")
    try:
        events = await converse_text(orchestrator.address, "What is the capital of France?")
    finally:
        orchestrator.stop()
    kinds = [e.WhichOneof("event") for e in events]
    assert "degraded" in kinds and "audio" not in kinds and kinds[-1] == "turn_completed", kinds
    degraded = next(e.degraded for e in events if e.WhichOneof("event") == "degraded")
    assert degraded.stage == 4  # STAGE_TTS
    turn = events[-1].turn_completed.turn
    assert turn.assistant_text and any("tts" in f for f in turn.providers.fallbacks)


async def test_every_llm_provider_failing_gives_a_spoken_apology(services, tmp_path):
    # An LLM service whose only provider (Groq) answers nowhere: every provider fails.
    llm_address = f"127.0.0.1:{free_port()}"
    broken_llm = ServiceProcess("llm_service", llm_address, {
        **services["env"], "VOICEBUS_LLM_ADDR": llm_address, "VOICEBUS_LLM_PROVIDERS": "groq",
        "GROQ_API_KEY": "test-key", "VOICEBUS_GROQ_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "VOICEBUS_NATS_URL": f"nats://127.0.0.1:{free_port()}"}, name="llm-broken").wait_healthy()
    orchestrator = isolated_orchestrator(services, tmp_path, VOICEBUS_LLM_ADDR=llm_address)
    try:
        events = await converse_text(orchestrator.address, "What is the capital of France?")
    finally:
        orchestrator.stop()
        broken_llm.stop()
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "turn_failed", kinds
    assert "audio" in kinds, "the apology is spoken"
    spoken = " ".join(e.audio.text for e in events if e.WhichOneof("event") == "audio")
    assert "sorry" in words(spoken)
    assert events[-1].turn_failed.turn.outcome == assistant_pb2.TURN_OUTCOME_FAILED
