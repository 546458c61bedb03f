"""Turns of a client that plays the answer in real time: they last until the audio has played,
and a barge-in during the playout keeps the words played (issue 14, items 1 and 2)."""

from __future__ import annotations

import time

import grpc

from fake_services import FakeLLM, FakeServices, FakeSTT, FakeTTS, Reply, Utterance
from orchestra import Orchestra, config, end_of_audio, interrupt, kinds, live, playback, speech, text
from voicebus.v1 import assistant_pb2

O = assistant_pb2
STORY = "Once there was a knight. He met a dragon. They became friends. The end."
SENTENCES = 4


def seconds_each(seconds: float) -> FakeTTS:
    return FakeTTS(seconds_for=lambda sentence: seconds)


async def rows(o: Orchestra, conversation_id: str) -> list[tuple]:
    stored = await o.stored(conversation_id)
    return [(t.user_text, t.assistant_text, t.outcome, t.interrupted) for t in stored.turns]


async def all_audio_sent(s, llm: FakeLLM) -> str:  # noqa: ANN001 - a LiveStream
    """Wait until every sentence's audio has arrived and the LLM is done; the turn's id."""
    first = await s.until("audio")
    for _ in range(SENTENCES - 1):
        await s.until("audio")
    await llm.wait_calls(1, ended=True)
    return first.turn_id


async def test_a_realtime_turn_ends_when_its_audio_has_played(nats_url):
    llm = FakeLLM([Reply.text(STORY)])
    async with Orchestra(FakeServices(llm=llm, tts=seconds_each(0.4)), nats_url) as o:
        sent = time.monotonic()
        events = await o.converse(config(realtime=True), text("Tell me a story."))
        took = time.monotonic() - sent
        assert kinds(events)[:2] == ["conversation_opened", "turn_started"] and kinds(events)[-1] == "turn_completed"
        assert [e.audio.sentence_index for e in events if e.WhichOneof("event") == "audio"] == [0, 1, 2, 3]
        assert took >= SENTENCES * 0.4, f"turn_completed after {took:.2f} s, before 1.6 s of audio could play"
        done = events[-1].turn_completed.turn
        assert done.outcome == O.TURN_OUTCOME_COMPLETED and done.assistant_text == STORY
        stages = await o.nats_stages(done.turn_id, until="turn_completed")
        assert stages.index("response_completed") < stages.index("turn_completed")


async def test_interrupt_after_the_answer_was_sent_keeps_the_words_played(nats_url):
    """The whole answer is out (every sentence's audio sent, the LLM done), the client is 12 s
    into its 40 s of speech: 'He' has played, 'met' not yet (it ends 3.75 s into sentence 2)."""
    llm = FakeLLM([Reply.text(STORY)])
    async with Orchestra(FakeServices(llm=llm, tts=seconds_each(10.0)), nats_url) as o:
        s = live(o, config(realtime=True), text("Tell me a story."))
        turn_id = await all_audio_sent(s, llm)
        s.send(playback(turn_id, 12_000), interrupt())
        done = (await s.until("turn_interrupted")).turn_interrupted.turn
        await s.finish()
        assert done.turn_id == turn_id and done.interrupted
        assert "turn_completed" not in kinds(s.events)
        assert await rows(o, s.events[0].conversation_id) == [
            ("Tell me a story.", "Once there was a knight. He", O.TURN_OUTCOME_INTERRUPTED, True)]
        stages = await o.nats_stages(turn_id, until="turn_interrupted")
        assert stages.index("response_completed") < stages.index("turn_interrupted")


async def test_speech_during_the_playout_interrupts_it_and_is_answered(nats_url):
    stt = FakeSTT([Utterance(0.2, 1.0, "stop please")])
    llm = FakeLLM([Reply.text(STORY), Reply.text("Okay.")])
    async with Orchestra(FakeServices(stt=stt, llm=llm, tts=seconds_each(10.0)), nats_url) as o:
        s = live(o, config(realtime=True), text("Tell me a story."))
        old = await all_audio_sent(s, llm)
        s.send(playback(old, 2_000), *speech(0.4))  # speech starts 0.2 s in: 'Once' has played
        await s.until("turn_interrupted", turn_id=old)
        new = await s.until("speech_started")
        s.send(*speech(0.9), end_of_audio())
        await s.until("audio", turn_id=new.turn_id)
        s.send(playback(new.turn_id, 60_000))
        done = (await s.until("turn_completed", turn_id=new.turn_id)).turn_completed.turn
        await s.finish()
        assert done.user_text == "stop please" and done.assistant_text == "Okay."
        assert await rows(o, s.events[0].conversation_id) == [
            ("Tell me a story.", "Once", O.TURN_OUTCOME_INTERRUPTED, True),
            ("stop please", "Okay.", O.TURN_OUTCOME_COMPLETED, False)]
        # what the LLM was told: the interrupted answer as far as it was heard
        assert [m.content for m in llm.requests[-1].messages][-3:] == ["Tell me a story.", "Once", "stop please"]


async def test_text_during_the_playout_interrupts_it_instead_of_being_refused(nats_url):
    llm = FakeLLM([Reply.text(STORY), Reply.text("Hello.")])
    async with Orchestra(FakeServices(llm=llm, tts=seconds_each(10.0)), nats_url) as o:
        s = live(o, config(realtime=True), text("Tell me a story."))
        old = await all_audio_sent(s, llm)
        s.send(playback(old, 0), text("Say hello."))
        await s.until("turn_interrupted", turn_id=old)
        new = await s.until("turn_started")
        await s.until("audio", turn_id=new.turn_id)
        s.send(playback(new.turn_id, 10_000))
        done = (await s.until("turn_completed", turn_id=new.turn_id)).turn_completed.turn
        await s.finish()
        assert done.assistant_text == "Hello." and "error" not in kinds(s.events)
        assert await rows(o, s.events[0].conversation_id) == [
            ("Tell me a story.", "", O.TURN_OUTCOME_INTERRUPTED, True),
            ("Say hello.", "Hello.", O.TURN_OUTCOME_COMPLETED, False)]


async def test_text_while_the_answer_is_written_is_still_refused(nats_url):
    llm = FakeLLM([Reply.text(STORY, hold_after=2)])
    async with Orchestra(FakeServices(llm=llm, tts=seconds_each(0.1)), nats_url) as o:
        s = live(o, config(realtime=True), text("Tell me a story."))
        await s.until("response_delta")
        s.send(text("Me too?"))
        error = (await s.until("error")).error
        llm.release()
        await s.until("turn_completed")
        await s.finish()
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]


async def test_a_report_of_everything_played_ends_the_turn_at_once(nats_url):
    """4 x 30 s of speech by the clock; the client says it has played it all (e.g. at double
    speed): the turn ends now, not in two minutes. Reports for other turns are ignored."""
    llm = FakeLLM([Reply.text(STORY)])
    async with Orchestra(FakeServices(llm=llm, tts=seconds_each(30.0)), nats_url) as o:
        s = live(o, config(realtime=True), text("Tell me a story."))
        turn_id = await all_audio_sent(s, llm)
        s.send(playback("not-this-turn", 120_000), playback(turn_id, 120_000))
        done = (await s.until("turn_completed", timeout=10)).turn_completed.turn
        await s.finish()
        assert done.turn_id == turn_id and done.assistant_text == STORY


async def test_without_realtime_playback_a_turn_ends_when_its_audio_is_sent(nats_url):
    llm = FakeLLM([Reply.text(STORY)])
    async with Orchestra(FakeServices(llm=llm, tts=seconds_each(30.0)), nats_url) as o:
        events = await o.converse(config(), text("Tell me a story."), timeout=10)
        assert events[-1].turn_completed.turn.assistant_text == STORY
