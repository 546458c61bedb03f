"""The Assistant API over real services: STT, LLM (SmolLM2), TTS, NATS and SQLite."""

from __future__ import annotations

import asyncio
import time
import wave

import grpc
import nats
import pytest

from helpers import ServiceProcess, espeak_wav, free_port, words
from voicebus.v1 import assistant_pb2, assistant_pb2_grpc, audio_pb2, events_pb2

QUESTION = "What is the capital of France?"


def service_env(nats_url: str, data_dir: str, ports: dict[str, int]) -> dict[str, str]:
    return {
        "VOICEBUS_NATS_URL": nats_url, "VOICEBUS_DATA_DIR": data_dir, "GROQ_API_KEY": "",
        "VOICEBUS_LLM_PROVIDERS": "local", "VOICEBUS_LLM_LOCAL_MODEL": "smollm2-135m",
        "VOICEBUS_STT_ADDR": f"127.0.0.1:{ports['stt']}", "VOICEBUS_LLM_ADDR": f"127.0.0.1:{ports['llm']}",
        "VOICEBUS_TTS_ADDR": f"127.0.0.1:{ports['tts']}",
        "VOICEBUS_ORCHESTRATOR_ADDR": f"127.0.0.1:{ports['orchestrator']}",
        "VOICEBUS_HEARTBEAT_SECONDS": "0.5", "VOICEBUS_LLM_TEMPERATURE": "0",  # the same answer every run
    }


@pytest.fixture(scope="module")
def stack(nats_server, tmp_path_factory):
    ports = {name: free_port() for name in ("stt", "llm", "tts", "orchestrator")}
    env = service_env(nats_server.url, str(tmp_path_factory.mktemp("orch-data")), ports)
    engines = [ServiceProcess(f"{name}_service", f"127.0.0.1:{ports[name]}", env, name=name)
               for name in ("stt", "llm", "tts")]
    orchestrator = ServiceProcess("orchestrator", env["VOICEBUS_ORCHESTRATOR_ADDR"], env)
    procs = {"stt": engines[0], "llm": engines[1], "tts": engines[2], "orchestrator": orchestrator}
    try:
        for proc in procs.values():
            proc.wait_healthy()
        yield {"env": env, "ports": ports, "procs": procs, "nats_url": nats_server.url}
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="module")
def question_pcm(tmp_path_factory):
    path = espeak_wav(QUESTION, tmp_path_factory.mktemp("speech") / "question.wav", speed=170)
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def assistant(stack) -> tuple[grpc.aio.Channel, assistant_pb2_grpc.AssistantStub]:
    channel = grpc.aio.insecure_channel(stack["env"]["VOICEBUS_ORCHESTRATOR_ADDR"])
    return channel, assistant_pb2_grpc.AssistantStub(channel)


def pcm_config(rate: int, conversation_id: str = "") -> assistant_pb2.ConverseRequest:
    return assistant_pb2.ConverseRequest(config=assistant_pb2.ConverseConfig(
        conversation_id=conversation_id, interim_results=True,
        input_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=rate),
        options=assistant_pb2.TurnOptions(synthesize_audio=True)))


async def collect_turn_events(js_sub, conversation_id: str, until: str, timeout: float = 20.0) -> list[str]:
    stages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = await js_sub.next_msg(timeout=1)
        except Exception:  # noqa: BLE001 - nats timeout
            continue
        event = events_pb2.TurnEvent()
        event.ParseFromString(msg.data)
        assert msg.headers and msg.headers.get("Nats-Msg-Id") == event.event_id
        if event.conversation_id == conversation_id:
            stages.append(msg.subject.rsplit(".", 1)[1])
            if stages[-1] == until:
                break
    return stages


async def test_spoken_question_is_answered_stored_and_announced(stack, question_pcm):
    pcm, rate = question_pcm
    nc = await nats.connect(stack["nats_url"])
    sub = await nc.subscribe("voicebus.turn.>")
    channel, stub = assistant(stack)
    events: list[assistant_pb2.ConverseResponse] = []

    async def requests():
        yield pcm_config(rate)
        step = rate // 10 * 2  # 100 ms of 16-bit samples
        for i in range(0, len(pcm), step):
            yield assistant_pb2.ConverseRequest(audio=pcm[i:i + step])
            await asyncio.sleep(0.1)  # real time, as a microphone sends it
        yield assistant_pb2.ConverseRequest(end_of_audio=assistant_pb2.EndOfAudio())

    async with channel:
        async for event in stub.Converse(requests(), timeout=120):
            events.append(event)
        conversation_id = events[0].conversation_id
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "conversation_opened" and events[0].conversation_opened.created
        assert kinds[-1] == "turn_completed", kinds
        finals = [e.transcript for e in events if e.WhichOneof("event") == "transcript" and e.transcript.is_final]
        assert len(finals) == 1 and {"capital", "france"} <= set(words(finals[0].text)), finals
        # Order: transcript final, then the answer's text and audio, then completion.
        assert kinds.index("turn_started") < kinds.index("transcript") < kinds.index("response_delta")
        assert "audio" in kinds and kinds.index("audio") < kinds.index("turn_completed")
        turn = events[-1].turn_completed.turn
        assert turn.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
        answer = "".join(e.response_delta.text for e in events if e.WhichOneof("event") == "response_delta")
        assert turn.assistant_text == answer.strip() and answer.strip()
        assert "paris" in answer.lower(), answer
        assert turn.timings.first_audio_seconds > 0 and turn.providers.llm_provider == "local"

        stored = await stub.GetConversation(assistant_pb2.GetConversationRequest(conversation_id=conversation_id))
        assert [t.turn_id for t in stored.conversation.turns] == [turn.turn_id]
        assert stored.conversation.turns[0].user_text == finals[0].text
        assert stored.conversation.turns[0].assistant_text == turn.assistant_text

    stages = await collect_turn_events(sub, conversation_id, "turn_completed")
    await nc.close()
    assert stages[0] == "turn_started" and stages[1] == "transcript_final" and stages[-1] == "turn_completed", stages
    assert {"response_completed", "first_audio_sent"} <= set(stages[2:-1]), stages


async def test_barge_in_stops_the_old_answer(stack):
    channel, stub = assistant(stack)
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()

    async def requests():
        yield pcm_config(16000)
        yield assistant_pb2.ConverseRequest(text="Tell me a long story about a brave knight and a dragon.")
        while (item := await outbox.get()) is not None:
            yield item

    async def read(call):
        async for event in call:
            await inbox.put(event)
        await inbox.put(None)

    async with channel:
        call = stub.Converse(requests(), timeout=120)
        reader = asyncio.create_task(read(call))
        seen: list[assistant_pb2.ConverseResponse] = []
        while True:  # wait for the first audio of the answer
            event = await asyncio.wait_for(inbox.get(), 60)
            seen.append(event)
            if event.WhichOneof("event") == "audio":
                break
        old_turn = event.turn_id
        await outbox.put(assistant_pb2.ConverseRequest(interrupt=assistant_pb2.Interrupt()))
        after: list[assistant_pb2.ConverseResponse] = []
        while True:
            event = await asyncio.wait_for(inbox.get(), 30)
            after.append(event)
            if event.WhichOneof("event") == "turn_interrupted":
                break
        await outbox.put(assistant_pb2.ConverseRequest(text="Say hello."))
        while True:
            event = await asyncio.wait_for(inbox.get(), 60)
            after.append(event)
            if event.WhichOneof("event") in ("turn_completed", "turn_failed"):
                break
        await outbox.put(None)
        await reader

        interrupted = next(e for e in after if e.WhichOneof("event") == "turn_interrupted").turn_interrupted.turn
        assert interrupted.turn_id == old_turn and interrupted.interrupted
        assert interrupted.outcome == assistant_pb2.TURN_OUTCOME_INTERRUPTED
        index = [e.WhichOneof("event") for e in after].index("turn_interrupted")
        assert all(e.turn_id != old_turn for e in after[index + 1:]), "old answer leaked after the interrupt"
        # What was delivered: the spoken sentences, a prefix of the whole answer text.
        # Exactly the sentences whose audio reached us, nothing the server had queued behind them.
        heard: dict[int, str] = {}
        for e in seen + after[:index]:
            if e.WhichOneof("event") == "audio" and e.turn_id == old_turn and e.audio.text:
                heard.setdefault(e.audio.sentence_index, e.audio.text)
        assert interrupted.assistant_text == " ".join(heard[i] for i in sorted(heard))
        full = "".join(e.response_delta.text for e in seen + after[:index]
                       if e.WhichOneof("event") == "response_delta" and e.turn_id == old_turn)
        assert len(interrupted.assistant_text) <= len(full.strip())
        stored = await stub.GetConversation(assistant_pb2.GetConversationRequest(
            conversation_id=after[-1].conversation_id))
        first = stored.conversation.turns[0]
        assert first.interrupted and first.assistant_text == interrupted.assistant_text
        assert stored.conversation.turns[1].outcome == assistant_pb2.TURN_OUTCOME_COMPLETED


async def test_restarted_orchestrator_continues_the_conversation(stack):
    channel, stub = assistant(stack)
    async with channel:
        first = await stub.ProcessTurn(assistant_pb2.ProcessTurnRequest(
            text="My name is Alice.", options=assistant_pb2.TurnOptions(synthesize_audio=False)), timeout=120)
    conversation_id = first.turn.conversation_id
    orchestrator = stack["procs"]["orchestrator"]
    orchestrator.stop()
    stack["procs"]["orchestrator"] = ServiceProcess("orchestrator", orchestrator.address, stack["env"],
                                                    name="orchestrator-restarted").wait_healthy()
    channel, stub = assistant(stack)
    async with channel:
        second = await stub.ProcessTurn(assistant_pb2.ProcessTurnRequest(
            conversation_id=conversation_id, text="What is my name?",
            options=assistant_pb2.TurnOptions(synthesize_audio=False)), timeout=120)
        stored = await stub.GetConversation(assistant_pb2.GetConversationRequest(conversation_id=conversation_id))
    assert second.turn.index == 1 and second.turn.outcome == assistant_pb2.TURN_OUTCOME_COMPLETED
    assert [t.user_text for t in stored.conversation.turns] == ["My name is Alice.", "What is my name?"]
    assert stored.conversation.turns[0].assistant_text == first.turn.assistant_text


async def test_bad_input_gets_clear_codes_and_nothing_is_lost(stack):
    channel, stub = assistant(stack)
    async with channel:
        kept = await stub.ProcessTurn(assistant_pb2.ProcessTurnRequest(
            text="Hello there.", options=assistant_pb2.TurnOptions(synthesize_audio=False)), timeout=120)
        cid = kept.turn.conversation_id
        cases = [
            (assistant_pb2.ProcessTurnRequest(), grpc.StatusCode.INVALID_ARGUMENT),
            (assistant_pb2.ProcessTurnRequest(text="   "), grpc.StatusCode.INVALID_ARGUMENT),
            (assistant_pb2.ProcessTurnRequest(text="x" * 5000), grpc.StatusCode.INVALID_ARGUMENT),
            (assistant_pb2.ProcessTurnRequest(conversation_id=cid, audio=b"this is not audio at all"),
             grpc.StatusCode.INVALID_ARGUMENT),
            (assistant_pb2.ProcessTurnRequest(conversation_id="nope", text="hi"), grpc.StatusCode.NOT_FOUND),
        ]
        for request, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ProcessTurn(request, timeout=60)
            assert err.value.code() == code, (request, err.value.details())
            assert "Traceback" not in (err.value.details() or "")

        async def audio_before_config():
            yield assistant_pb2.ConverseRequest(audio=b"\0\0" * 100)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Converse(audio_before_config(), timeout=30):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        async def unknown_conversation():
            yield assistant_pb2.ConverseRequest(config=assistant_pb2.ConverseConfig(conversation_id="missing"))

        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Converse(unknown_conversation(), timeout=30):
                pass
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        stored = await stub.GetConversation(assistant_pb2.GetConversationRequest(conversation_id=cid))
        assert [t.user_text for t in stored.conversation.turns] == ["Hello there."]
        listed = await stub.ListConversations(assistant_pb2.ListConversationsRequest(page_size=500))
        assert cid in [c.conversation_id for c in listed.conversations]
        await stub.DeleteConversation(assistant_pb2.DeleteConversationRequest(conversation_id=cid))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetConversation(assistant_pb2.GetConversationRequest(conversation_id=cid))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
