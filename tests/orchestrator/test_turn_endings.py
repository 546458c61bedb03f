"""How turns end: no speech, barge-in at each stage, failure at each stage, failover at each stage."""

from __future__ import annotations

import grpc
import pytest

from fake_services import FakeLLM, FakeServices, FakeSTT, FakeTTS, Reply, Utterance, pcm16_audio
from orchestra import Orchestra, speech, audio, config, end_of_audio, interrupt, kinds, live, text
from voicebus.v1 import assistant_pb2, audio_pb2, common_pb2

O = assistant_pb2
STORY = "Once there was a knight. He met a dragon. They became friends. The end."


async def rows(o: Orchestra, conversation_id: str) -> list[tuple]:
    stored = await o.stored(conversation_id)
    return [(t.user_text, t.assistant_text, t.outcome, t.interrupted) for t in stored.turns]


# -- no speech ---------------------------------------------------------------------------------
@pytest.mark.parametrize("utterance", [Utterance(0.2, 0.6, "", no_speech=True),
                                       Utterance(0.2, 0.6, "mumble", confidence=0.05)], ids=["no_speech", "unclear"])
async def test_no_usable_speech_is_asked_to_repeat_without_the_llm(nats_url, utterance):
    async with Orchestra(FakeServices(stt=FakeSTT([utterance])), nats_url) as o:
        events = await o.converse(config(), *speech(0.8), end_of_audio())
        assert kinds(events) == ["conversation_opened", "turn_started", "speech_started", "transcript_final",
                                 "response_delta", "audio", "turn_completed"]
        turn = events[-1].turn_completed.turn
        assert turn.outcome == O.TURN_OUTCOME_NO_SPEECH and turn.assistant_text.startswith("Sorry, I didn't catch")
        assert o.fakes.llm.requests == []


# -- barge-in ----------------------------------------------------------------------------------
async def test_interrupt_before_the_first_token(nats_url):
    llm = FakeLLM([Reply.text(STORY, hold_after=0), Reply.text(STORY)])
    async with Orchestra(FakeServices(llm=llm), nats_url) as o:
        s = live(o, config(), text("Tell me a story."))
        started = await s.until("turn_started")
        await llm.wait_calls(1, ended=False)
        s.send(interrupt())
        done = (await s.until("turn_interrupted")).turn_interrupted.turn
        s.send(text("Say hello."))
        await s.until("turn_completed")
        await s.finish()
        assert done.turn_id == started.turn_id and done.interrupted and done.assistant_text == ""
        assert kinds([e for e in s.events if e.turn_id == started.turn_id]) == ["turn_started", "turn_interrupted"]
        await llm.wait_until(lambda: llm.cancelled == 1, "the LLM call cancelled")
        assert await rows(o, s.events[0].conversation_id) == [
            ("Tell me a story.", "", O.TURN_OUTCOME_INTERRUPTED, True),
            ("Say hello.", STORY, O.TURN_OUTCOME_COMPLETED, False)]
        # the next prompt knows what was (not) said: the interrupted turn's question, no answer
        assert [m.content for m in llm.requests[-1].messages][-2:] == ["Tell me a story.", "Say hello."]


async def test_interrupt_mid_answer_keeps_exactly_the_sentences_delivered(nats_url):
    tts = FakeTTS(hold_after_sentences=2)
    async with Orchestra(FakeServices(llm=FakeLLM([Reply.text(STORY)]), tts=tts), nats_url) as o:
        s = live(o, config(), text("Tell me a story."))
        first = await s.until("audio")
        await s.until("audio")
        s.send(interrupt())
        done = (await s.until("turn_interrupted")).turn_interrupted.turn
        await s.finish()
        heard = [e.audio.text for e in s.events if e.WhichOneof("event") == "audio"]
        assert heard == ["Once there was a knight.", "He met a dragon."] and first.audio.sentence_index == 0
        assert done.assistant_text == " ".join(heard)
        after = [e.WhichOneof("event") for e in s.events[s.events.index(
            next(e for e in s.events if e.WhichOneof("event") == "turn_interrupted")):]]
        assert after == ["turn_interrupted"], "nothing of the old answer after its interrupt"
        assert await rows(o, s.events[0].conversation_id) == [
            ("Tell me a story.", "Once there was a knight. He met a dragon.", O.TURN_OUTCOME_INTERRUPTED, True)]
        await tts.wait_until(lambda: tts.cancelled == 1, "the TTS call cancelled")


async def test_interrupt_during_playout_after_the_answer_was_written(nats_url):
    """The LLM has finished (response_completed is out) and only the speech is still going out."""
    llm, tts = FakeLLM([Reply.text(STORY)]), FakeTTS(hold_after_sentences=1)
    async with Orchestra(FakeServices(llm=llm, tts=tts), nats_url) as o:
        s = live(o, config(), text("Tell me a story."))
        first = await s.until("audio")
        await llm.wait_calls(1, ended=True)
        stages = await o.nats_stages(first.turn_id, until="response_completed")
        s.send(interrupt())
        done = (await s.until("turn_interrupted")).turn_interrupted.turn
        await s.finish()
        assert "response_completed" in stages and done.interrupted
        assert [e.audio.text for e in s.events if e.WhichOneof("event") == "audio"] == ["Once there was a knight."]
        assert "".join(e.response_delta.text for e in s.events if e.WhichOneof("event") == "response_delta") == STORY
        assert await rows(o, s.events[0].conversation_id) == [
            ("Tell me a story.", "Once there was a knight.", O.TURN_OUTCOME_INTERRUPTED, True)]
        assert (await o.nats_stages(first.turn_id, until="turn_interrupted"))[-1] == "turn_interrupted"
        await tts.wait_until(lambda: tts.cancelled == 1, "the TTS call cancelled")


async def test_speech_during_the_answer_interrupts_it_and_starts_a_turn(nats_url):
    stt = FakeSTT([Utterance(0.2, 1.0, "stop")])
    tts = FakeTTS(hold_after_sentences=1)
    async with Orchestra(FakeServices(stt=stt, llm=FakeLLM([Reply.text(STORY), Reply.text("Okay.")]), tts=tts),
                         nats_url) as o:
        s = live(o, config(), text("Tell me a story."))
        old = await s.until("audio")
        s.send(*speech(0.4))  # the fake hears speech start at 0.2 s
        await s.until("turn_interrupted")
        new = await s.until("speech_started")
        s.send(*speech(0.9), end_of_audio())
        done = (await s.until("turn_completed", turn_id=new.turn_id)).turn_completed.turn
        await s.finish()
        assert new.turn_id != old.turn_id and done.user_text == "stop" and done.assistant_text == "Okay."
        old_kinds = kinds(e for e in s.events if e.turn_id == old.turn_id)
        assert old_kinds[0] == "turn_started" and old_kinds[-1] == "turn_interrupted", old_kinds
        assert kinds(e for e in s.events if e.turn_id == new.turn_id) == [
            "turn_started", "speech_started", "transcript_final", "response_delta", "audio", "turn_completed"]
        assert await rows(o, s.events[0].conversation_id) == [
            ("Tell me a story.", "Once there was a knight.", O.TURN_OUTCOME_INTERRUPTED, True),
            ("stop", "Okay.", O.TURN_OUTCOME_COMPLETED, False)]


# -- failures ----------------------------------------------------------------------------------
async def test_llm_failing_before_its_first_token_is_a_spoken_apology(nats_url):
    llm = FakeLLM([Reply.text("x", fail_before_first=grpc.StatusCode.UNAVAILABLE)])
    async with Orchestra(FakeServices(llm=llm), nats_url) as o:
        events = await o.converse(config(), text("Hello?"))
        assert kinds(events) == ["conversation_opened", "turn_started", "response_delta", "audio", "turn_failed"]
        failed = events[-1].turn_failed
        assert failed.stage == common_pb2.STAGE_LLM and failed.turn.outcome == O.TURN_OUTCOME_FAILED
        assert failed.turn.assistant_text.startswith("Sorry, I can't answer right now")
        assert (await rows(o, events[0].conversation_id))[0][2] == O.TURN_OUTCOME_FAILED
        assert await o.nats_stages(failed.turn.turn_id, until="turn_failed")


async def test_llm_failing_mid_answer_fails_the_turn_without_an_apology(nats_url):
    llm = FakeLLM([Reply.text(STORY, fail_after=3)])
    async with Orchestra(FakeServices(llm=llm), nats_url) as o:
        events = await o.converse(config(speak=False), text("Tell me a story."))
        assert kinds(events) == ["conversation_opened", "turn_started", "response_delta", "turn_failed"]
        failed = events[-1].turn_failed
        assert failed.stage == common_pb2.STAGE_LLM and "Sorry" not in failed.turn.assistant_text
        assert failed.turn.assistant_text == "Once there was"


async def test_tts_failing_gives_the_text_and_a_degraded_event(nats_url):
    llm = FakeLLM([Reply(tokens=["The capital of France is Paris."])])
    async with Orchestra(FakeServices(llm=llm, tts=FakeTTS(fail_on_open=True)), nats_url) as o:
        events = await o.converse(config(), text("Hello?"))
        assert kinds(events) == ["conversation_opened", "turn_started", "response_delta", "degraded", "turn_completed"]
        assert events[3].degraded.stage == common_pb2.STAGE_TTS
        turn = events[-1].turn_completed.turn
        assert turn.outcome == O.TURN_OUTCOME_COMPLETED and turn.assistant_text == "The capital of France is Paris."
        assert any(f.startswith("tts: no speech") for f in turn.providers.fallbacks)


@pytest.mark.parametrize("fault, code, said, seconds", [
    # frames keep coming after the failure: still one error, not one per frame
    ((grpc.StatusCode.UNAVAILABLE, "the fake speech recognizer failed"), grpc.StatusCode.UNAVAILABLE,
     "speech recognition unavailable", 0.6),
    # overload is not an outage: the client is told to retry later (HTTP 429), not 503. Exactly
    # 20 messages (the config and 19 frames), so the fake fails after the last write: a write
    # after the server's status makes grpc-python report INTERNAL instead (grpc/grpc#36066),
    # which the orchestrator can only take for an outage
    ((grpc.StatusCode.RESOURCE_EXHAUSTED, "the fake recognizer's queue is full"), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "every instance is busy", 0.38),
], ids=["broken", "busy"])
async def test_stt_failing_mid_utterance_with_no_other_instance_fails_the_turn_once(nats_url, fault, code, said,
                                                                                    seconds):
    stt = FakeSTT([Utterance(0.1, 2.0, "a long question")], fail_after_messages=20, fail_with=fault)
    async with Orchestra(FakeServices(stt=stt), nats_url, stt_outage_seconds=0.3) as o:
        s = live(o, config())
        s.send(*speech(seconds))
        started = await s.until("speech_started")
        failed = (await s.until("turn_failed", timeout=15)).turn_failed
        events = await s.finish()
        assert failed.stage == common_pb2.STAGE_STT and failed.turn.turn_id == started.turn_id
        assert said in failed.message
        errors = [e.error for e in events if e.WhichOneof("event") == "error"]
        assert [e.code for e in errors] == [code.value[0]], ("one error per outage, not one per chunk", errors)
        assert errors[0].retryable
        assert await rows(o, events[0].conversation_id) == [("", "", O.TURN_OUTCOME_FAILED, False)]


# -- failover ----------------------------------------------------------------------------------
async def test_stt_failover_mid_answer_is_not_a_barge_in(nats_url):
    """The replacement hears the whole recording again; its speech-started must not interrupt.

    WebM input (the page's): a container cannot be cut, so the replay is the whole recording,
    which the fake's timeline script can follow. (PCM16 replays start after the last final.)"""
    script = [Utterance(0.1, 0.5, "first question"), Utterance(1.5, 1.9, "second question")]
    broken = FakeSTT(script, fail_after_messages=60)  # breaks at 1.2 s, during the first answer
    backup = FakeSTT(script)
    tts = FakeTTS(hold_after_sentences=1)
    fakes = FakeServices(stt=broken, stt_backup=backup, tts=tts,
                         llm=FakeLLM([Reply.text(STORY), Reply.text("Second.")]))
    async with Orchestra(fakes, nats_url) as o:
        o.add_instance("stt", "stt_backup")
        s = live(o, config(encoding=audio_pb2.AUDIO_ENCODING_WEBM_OPUS, rate=0))
        s.send(*speech(1.1))
        await s.until("audio")
        s.send(*speech(0.2))  # the primary breaks here; the backup replays all 1.3 s
        await backup.wait_until(lambda: len(backup.streams) == 1, "the replay on the backup")
        tts.release()
        first = (await s.until("turn_completed")).turn_completed.turn
        s.send(*speech(1.2), end_of_audio())
        second = (await s.until("turn_completed", turn_id="")).turn_completed.turn
        await s.finish()
        assert "turn_interrupted" not in kinds(s.events)
        assert first.user_text == "first question" and first.assistant_text == STORY
        assert second.user_text == "second question"
        assert sum(1 for e in s.events if e.WhichOneof("event") == "speech_started") == 2
