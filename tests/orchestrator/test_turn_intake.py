"""ProcessTurn and Converse input, conversations' lifetime, races, deletes, restarts, outages."""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import pytest

from fake_services import FakeLLM, FakeServices, FakeSTT, FakeTTS, Reply, Utterance, pcm16_audio
from orchestra import Orchestra, speech, audio, config, end_of_audio, kinds, live, text
from orchestrator.store_sqlite import SqliteStore
from voicebus.v1 import assistant_pb2, audio_pb2, common_pb2

O = assistant_pb2
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def turn_request(**fields) -> O.ProcessTurnRequest:
    fields.setdefault("options", O.TurnOptions(synthesize_audio=False))
    return O.ProcessTurnRequest(**fields)


def message(role: int, content: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content)


BAD_TURNS = [
    (turn_request(), INVALID, "send audio or text"),
    (turn_request(text="   "), INVALID, "empty text"),
    (turn_request(text="x" * 2001), INVALID, "limit is 2000"),
    (turn_request(audio=b""), INVALID, "audio is empty"),
    (turn_request(audio=b"\0" * 10, audio_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16,
                                                                       sample_rate_hz=11)), INVALID, "sample_rate_hz"),
    (turn_request(text="hi", conversation_id="nope"), grpc.StatusCode.NOT_FOUND, "no conversation"),
    (turn_request(text="hi", conversation_id="x" * 20000), grpc.StatusCode.NOT_FOUND, "no conversation"),
    (turn_request(text="hi", options=O.TurnOptions(language_code="e" * 1000)), INVALID, "language tag"),
    (turn_request(text="hi", options=O.TurnOptions(voice="v" * 101)), INVALID, "voice"),
    (turn_request(text="hi", history=[message(common_pb2.ROLE_USER, "x")] * 101), INVALID, "history has 101"),
    (turn_request(text="hi", history=[message(common_pb2.ROLE_USER, "x" * 8001)]), INVALID, "history[0]"),
    (turn_request(text="hi", history=[message(common_pb2.ROLE_UNSPECIFIED, "x")]), INVALID, "no role"),
]


@pytest.mark.parametrize("request_, code, words", BAD_TURNS, ids=[
    "nothing", "blank", "long_text", "empty_audio", "bad_rate", "unknown_id", "huge_id", "huge_language",
    "long_voice", "many_history", "long_history", "roleless_history"])
async def test_process_turn_bad_input_is_refused_and_leaves_nothing(nats_url, request_, code, words):
    async with Orchestra(FakeServices(), nats_url) as o:
        details = await o.expect_status(o.stub.ProcessTurn(request_, timeout=10), code)
        assert words in details and len(details) < 300, details
        listed = await o.stub.ListConversations(O.ListConversationsRequest())
        assert list(listed.conversations) == [], "a refused request created a conversation"
        assert o.fakes.llm.requests == []


async def test_process_turn_text_with_seeded_history(nats_url):
    async with Orchestra(FakeServices(llm=FakeLLM([Reply.text("You are Alice.")])), nats_url) as o:
        reply = await o.stub.ProcessTurn(turn_request(text="What is my name?", history=[
            message(common_pb2.ROLE_USER, "My name is Alice."), message(common_pb2.ROLE_ASSISTANT, "Hello Alice.")]))
        assert reply.turn.outcome == O.TURN_OUTCOME_COMPLETED and reply.turn.index == 1
        stored = await o.stored(reply.turn.conversation_id)
        assert [(t.user_text, t.assistant_text) for t in stored.turns] == [
            ("My name is Alice.", "Hello Alice."), ("What is my name?", "You are Alice.")]
        assert [m.content for m in o.fakes.llm.requests[0].messages] == [
            "My name is Alice.", "Hello Alice.", "What is my name?"]


async def test_process_turn_audio_returns_one_wav(nats_url):
    stt = FakeSTT([Utterance(0.1, 0.5, "what is the capital of france")])
    async with Orchestra(FakeServices(stt=stt), nats_url) as o:
        reply = await o.stub.ProcessTurn(O.ProcessTurnRequest(
            audio=pcm16_audio(0.8), audio_format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16,
                                                                         sample_rate_hz=16000),
            options=O.TurnOptions(synthesize_audio=True, output_format=audio_pb2.AudioFormat(
                encoding=audio_pb2.AUDIO_ENCODING_WAV))))
        assert reply.turn.user_text == "what is the capital of france"
        assert reply.audio[:4] == b"RIFF" and reply.audio_format.encoding == audio_pb2.AUDIO_ENCODING_WAV


async def test_list_with_a_page_token_we_never_gave_is_invalid(nats_url):
    async with Orchestra(FakeServices(), nats_url) as o:
        for token in ("1180591620717411303424", "-1", "abc"):
            await o.expect_status(o.stub.ListConversations(O.ListConversationsRequest(page_token=token)), INVALID)
        await o.expect_status(o.stub.GetConversation(O.GetConversationRequest(conversation_id="x" * 20000)),
                              grpc.StatusCode.NOT_FOUND)


async def test_a_stream_without_turns_stores_no_conversation(nats_url):
    async with Orchestra(FakeServices(), nats_url) as o:
        events = await o.converse(config(), text(""), text("x" * 3000))
        assert kinds(events) == ["conversation_opened", "error", "error"]
        assert [e.error.code for e in events[1:]] == [INVALID.value[0]] * 2
        assert list((await o.stub.ListConversations(O.ListConversationsRequest())).conversations) == []


async def test_bad_stream_config_ends_the_stream(nats_url):
    async with Orchestra(FakeServices(), nats_url) as o:
        for bad, code in ((config(conversation_id="missing"), grpc.StatusCode.NOT_FOUND),
                          (config(rate=11), INVALID), (text("hi"), INVALID)):
            s = live(o, bad)
            assert await s.ended() == code, s.details


async def test_text_while_a_turn_runs_is_refused(nats_url):
    llm = FakeLLM([Reply.text("Slow answer.", hold_after=1)])
    async with Orchestra(FakeServices(llm=llm), nats_url) as o:
        s = live(o, config(speak=False), text("First."))
        await s.until("response_delta")
        s.send(text("Second."))
        error = (await s.until("error")).error
        llm.release()
        await s.until("turn_completed")
        await s.finish()
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0] and error.stage == common_pb2.STAGE_INPUT
        assert kinds(s.events).count("turn_started") == 1


async def test_two_turns_racing_for_one_conversation(nats_url):
    llm = FakeLLM([Reply.text("One.")])
    async with Orchestra(FakeServices(llm=llm), nats_url) as o:
        first = await o.stub.ProcessTurn(turn_request(text="Hello."))
        assert first.turn.outcome == O.TURN_OUTCOME_COMPLETED and first.turn.assistant_text == "One."
        cid = first.turn.conversation_id
        llm.replies = [Reply.text("Held.", hold_after=0), Reply.text("Done.")]
        llm.calls.clear()
        running = asyncio.ensure_future(o.stub.ProcessTurn(turn_request(text="Busy?", conversation_id=cid)))
        await llm.wait_calls(1, ended=False)
        await o.expect_status(o.stub.ProcessTurn(turn_request(text="Me too?", conversation_id=cid)),
                              grpc.StatusCode.ABORTED)
        s = live(o, config(conversation_id=cid), text("And me?"))
        error = (await s.until("error")).error
        llm.release()
        assert (await running).turn.outcome == O.TURN_OUTCOME_COMPLETED
        await s.finish()
        assert error.code == grpc.StatusCode.ABORTED.value[0] and "turn_started" not in kinds(s.events)
        stored = await o.stored(cid)
        assert [t.user_text for t in stored.turns] == ["Hello.", "Busy?"]


async def test_delete_during_a_turn_ends_it_and_the_stream(nats_url):
    llm = FakeLLM([Reply.text("Hello."), Reply.text("Held.", hold_after=0)])
    async with Orchestra(FakeServices(llm=llm), nats_url) as o:
        first = await o.converse(config(speak=False), text("Hi."))
        cid = first[0].conversation_id
        s = live(o, config(conversation_id=cid, speak=False), text("Tell me more."))
        started = await s.until("turn_started")
        await llm.wait_calls(2, ended=False)
        await o.stub.DeleteConversation(O.DeleteConversationRequest(conversation_id=cid))
        failed = (await s.until("turn_failed")).turn_failed
        assert await s.ended() == grpc.StatusCode.NOT_FOUND and "deleted" in s.details
        assert failed.turn.turn_id == started.turn_id and failed.stage == common_pb2.STAGE_INPUT
        assert "deleted" in failed.message
        await o.expect_status(o.stub.GetConversation(O.GetConversationRequest(conversation_id=cid)),
                              grpc.StatusCode.NOT_FOUND)
        with sqlite3.connect(o.settings.database()) as db:
            assert db.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 0


async def test_turns_left_running_by_a_crash_are_failed_at_start(tmp_path):
    store = SqliteStore(tmp_path / "voicebus.db")
    await store.open()
    turn = O.Turn(turn_id="t1", conversation_id="c1", user_text="half done")
    await store.start_turn(turn)
    await store.close()
    again = SqliteStore(tmp_path / "voicebus.db")
    await again.open()
    assert await again.fail_unfinished() == 1
    stored = await again.get("c1")
    await again.close()
    assert stored is not None
    assert [(t.outcome, t.error_message) for t in stored.turns] == [
        (O.TURN_OUTCOME_FAILED, "interrupted by a restart of the orchestrator")]


async def test_llm_and_tts_fail_over_before_their_first_output(nats_url):
    fakes = FakeServices(llm=FakeLLM([Reply.text("x", fail_before_first=grpc.StatusCode.UNAVAILABLE)]),
                         llm_backup=FakeLLM([Reply.text("From the backup.")]),
                         tts=FakeTTS(fail_on_open=True), tts_backup=FakeTTS(voice="backup-voice"))
    async with Orchestra(fakes, nats_url) as o:
        o.add_instance("llm", "llm_backup")
        o.add_instance("tts", "tts_backup")
        events = await o.converse(config(), text("Hello?"))
        turn = events[-1].turn_completed.turn
        assert turn.assistant_text == "From the backup." and turn.providers.tts_voice == "backup-voice"
        assert "degraded" not in kinds(events)
        moved = [f for f in turn.providers.fallbacks if "tried the next one" in f]
        assert [f.split(":")[0] for f in moved] == ["llm", "tts"], turn.providers.fallbacks


async def test_stt_outage_keeps_the_utterance_and_answers_it_when_stt_returns(nats_url):
    stt = FakeSTT([Utterance(0.1, 0.6, "are you there")])
    async with Orchestra(FakeServices(stt=stt), nats_url, stt_outage_seconds=20) as o:
        await o.fakes.stop("stt")
        s = live(o, config())
        s.send(*speech(0.4))
        error = (await s.until("error")).error
        await o.fakes.restart("stt")
        s.send(*speech(0.8), end_of_audio())
        done = (await s.until("turn_completed", timeout=20)).turn_completed.turn
        events = await s.finish()
        assert error.stage == common_pb2.STAGE_STT and error.retryable and "retrying" in error.message
        assert done.user_text == "are you there"
        assert [e.WhichOneof("event") for e in events].count("error") == 1, "one error for the outage"


async def test_a_long_open_microphone_is_limited_per_utterance(nats_url):
    script = [Utterance(0.1 + 1.0 * i, 0.4 + 1.0 * i, f"question {i}") for i in range(4)]
    async with Orchestra(FakeServices(stt=FakeSTT(script)), nats_url, max_audio_mb=0.05) as o:  # ~1.6 s
        paced = [item for frame in speech(4.0) for item in (frame, 0.004)]  # finals come while audio flows
        events = await o.converse(config(speak=False), *paced, end_of_audio(), timeout=30)
        # each question is heard (an answer still running when the next one starts is barged in on)
        ended = [e for e in events if e.WhichOneof("event") in ("turn_completed", "turn_interrupted")]
        heard = [getattr(e, e.WhichOneof("event")).turn.user_text for e in ended]
        assert heard == ["question 0", "question 1", "question 2", "question 3"], kinds(events)
        assert "error" not in kinds(events)
