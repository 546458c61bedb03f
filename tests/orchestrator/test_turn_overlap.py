"""Speech over a playing answer (issue 14, item 3): it pauses the answer at once, then its words
decide — a barge-in ends the answer and is the next turn; a backchannel or noise lets the answer
play on and is neither answered nor stored. Also: first-audio latency counts from the last
speech sample (item 7)."""

from __future__ import annotations

import asyncio

import pytest

from fake_services import FakeLLM, FakeServices, FakeSTT, FakeTTS, Reply, Utterance
from orchestra import Orchestra, config, end_of_audio, interrupt, kinds, live, playback, speech, text
from orchestrator.overlap import is_backchannel
from orchestrator.playout import Playout
from voicebus.v1 import assistant_pb2

O = assistant_pb2
STORY = "Once there was a knight. He met a dragon. They became friends. The end."
LONG_WINDOW = 60_000  # ms: only the words decide


def story_services(stt: FakeSTT, *replies: Reply) -> tuple[FakeServices, FakeLLM]:
    llm = FakeLLM([Reply.text(STORY), *replies])
    return FakeServices(stt=stt, llm=llm, tts=FakeTTS(seconds_for=lambda sentence: 10.0)), llm


def of_turn(events: list[O.ConverseResponse], turn_id: str) -> list[str]:
    return kinds(e for e in events if e.turn_id == turn_id)


def paused_then_interrupted(events: list[O.ConverseResponse], turn_id: str) -> bool:
    """The answer was paused (its audio was still coming, maybe), then ended interrupted."""
    seen = of_turn(events, turn_id)
    return seen[-1] == "turn_interrupted" and seen.count("playback_paused") == 1 \
        and seen.index("audio") < seen.index("playback_paused")


async def all_audio(s, turn_id: str, sentences: int = 4) -> None:  # noqa: ANN001 - a LiveStream
    while sum(1 for e in s.events if e.turn_id == turn_id and e.WhichOneof("event") == "audio") < sentences:
        await s.until("audio", turn_id=turn_id)


async def rows(o: Orchestra, conversation_id: str) -> list[tuple]:
    stored = await o.stored(conversation_id)
    return [(t.user_text, t.assistant_text, t.outcome, t.interrupted) for t in stored.turns]


async def test_words_over_the_answer_pause_it_then_barge_in_before_the_speech_ends(nats_url):
    """The interim "wait" (0.6 s into the audio) is not a backchannel: the answer, paused at the
    speech's start, is interrupted with the speech still going on; the speech is the next turn."""
    stt = FakeSTT([Utterance(0.2, 1.0, "wait, what dragon?", interims=["wait"])])
    services, llm = story_services(stt, Reply.text("A red one."))
    async with Orchestra(services, nats_url, backchannel_window_ms=LONG_WINDOW) as o:
        s = live(o, config(realtime=True), text("Tell me a story."))
        old = (await s.until("audio")).turn_id
        s.send(playback(old, 2_000), *speech(0.7))  # 'Once' has played when the speech starts
        await s.until("playback_paused", turn_id=old)
        done = (await s.until("turn_interrupted", turn_id=old)).turn_interrupted.turn
        new = await s.until("speech_started")
        s.send(*speech(1.0))  # the rest of the question and the silence that ends it
        await s.until("audio", turn_id=new.turn_id)
        s.send(playback(new.turn_id, 60_000))
        answer = (await s.until("turn_completed", turn_id=new.turn_id)).turn_completed.turn
        await s.finish()
        assert paused_then_interrupted(s.events, old), of_turn(s.events, old)
        assert done.interrupted and done.assistant_text == "Once"
        assert of_turn(s.events, new.turn_id)[:3] == ["turn_started", "speech_started", "transcript_interim"]
        assert answer.user_text == "wait, what dragon?" and answer.assistant_text == "A red one."
        assert await rows(o, s.events[0].conversation_id) == [
            ("Tell me a story.", "Once", O.TURN_OUTCOME_INTERRUPTED, True),
            ("wait, what dragon?", "A red one.", O.TURN_OUTCOME_COMPLETED, False)]
        assert len(llm.requests) == 2


@pytest.mark.parametrize("utterance", [
    Utterance(0.2, 0.6, "Mm-hmm.", interims=["Mm"]),
    Utterance(0.2, 0.7, "Okay, yeah."),
    Utterance(0.2, 0.4, "(coughs)", no_speech=True),
    Utterance(0.2, 0.5, "Thanks for watching!", confidence=0.2),  # whisper guessing at a door slam
], ids=["mm-hmm", "okay-yeah", "cough", "unsure-guess"])
async def test_a_backchannel_or_noise_over_the_answer_lets_it_play_on(nats_url, utterance):
    stt = FakeSTT([utterance])
    services, llm = story_services(stt)
    async with Orchestra(services, nats_url, backchannel_window_ms=LONG_WINDOW) as o:
        s = live(o, config(realtime=True), text("Tell me a story."))
        old = (await s.until("audio")).turn_id
        s.send(playback(old, 2_000), *speech(1.5))
        await s.until("playback_paused", turn_id=old)
        resumed = (await s.until("playback_resumed", turn_id=old)).playback_resumed
        await all_audio(s, old)
        s.send(playback(old, 40_000))  # everything played
        done = (await s.until("turn_completed", turn_id=old)).turn_completed.turn
        await s.finish()
        assert resumed.heard == utterance.heard_text
        assert of_turn(s.events, old).count("playback_paused") == 1
        assert [e.turn_id for e in s.events if e.WhichOneof("event") == "turn_started"] == [old]
        assert "speech_started" not in kinds(s.events) and "turn_interrupted" not in kinds(s.events)
        assert done.assistant_text == STORY
        assert await rows(o, s.events[0].conversation_id) == [
            ("Tell me a story.", STORY, O.TURN_OUTCOME_COMPLETED, False)]
        assert len(llm.requests) == 1  # nothing answered the backchannel


async def test_speech_that_goes_on_over_the_answer_barges_in_without_waiting_for_words(nats_url):
    stt = FakeSTT([Utterance(0.2, 3.0, "tell me more about the dragon")])  # no interims
    services, llm = story_services(stt, Reply.text("It was red."))
    async with Orchestra(services, nats_url, backchannel_window_ms=300) as o:
        s = live(o, config(realtime=True), text("Tell me a story."))
        old = (await s.until("audio")).turn_id
        s.send(*speech(1.0))
        await s.until("turn_interrupted", turn_id=old)
        new = await s.until("speech_started")
        s.send(*speech(2.0), end_of_audio())
        answer = (await s.until("turn_completed", turn_id=new.turn_id, timeout=30)).turn_completed.turn
        await s.finish()
        assert paused_then_interrupted(s.events, old), of_turn(s.events, old)
        assert answer.user_text == "tell me more about the dragon" and answer.assistant_text == "It was red."


async def test_interrupt_while_the_speech_is_judged_makes_it_the_next_turn(nats_url):
    stt = FakeSTT([Utterance(0.2, 0.6, "Mm-hmm.")])
    services, llm = story_services(stt, Reply.text("Yes?"))
    async with Orchestra(services, nats_url, backchannel_window_ms=LONG_WINDOW) as o:
        s = live(o, config(realtime=True), text("Tell me a story."))
        old = (await s.until("audio")).turn_id
        s.send(*speech(0.4))
        await s.until("playback_paused", turn_id=old)
        s.send(interrupt())  # the user pressed stop: the "mm-hmm" is theirs to say now
        await s.until("turn_interrupted", turn_id=old)
        new = await s.until("speech_started")
        s.send(*speech(1.0))
        answer = (await s.until("turn_completed", turn_id=new.turn_id, timeout=30)).turn_completed.turn
        await s.finish()
        assert answer.user_text == "Mm-hmm." and answer.outcome == O.TURN_OUTCOME_COMPLETED


async def test_hands_free_first_audio_counts_from_the_last_speech_sample(nats_url):
    """The end of the utterance is known only after its silence; the clock starts before it, at
    the audio that ended the speech (here 0.8 s of wall time before the silence arrives)."""
    stt = FakeSTT([Utterance(0.1, 0.5, "What is the capital of France?")], eou_silence=0.5)
    async with Orchestra(FakeServices(stt=stt), nats_url) as o:
        s = live(o, config(), *speech(0.6))  # the speech and 0.1 s of its silence
        await s.until("speech_started")
        await asyncio.sleep(0.8)
        s.send(*speech(0.6))  # the rest of the silence: end of utterance, final, answer
        done = (await s.until("turn_completed", timeout=30)).turn_completed.turn
        await s.finish()
        assert done.timings.first_audio_seconds >= 0.8, done.timings
        assert done.timings.stt_seconds >= 0.8, done.timings


def test_the_playout_clock_stands_still_while_paused():
    now = [100.0]
    clock = Playout(clock=lambda: now[0])
    clock.delivered("One two three four.", 4.0)
    now[0] += 1.0
    clock.pause()
    now[0] += 5.0  # paused: nothing plays
    assert clock.heard_text() == "One"
    clock.delivered("Five six.", 2.0)  # arrives while paused: plays after the first chunk
    clock.resume()
    assert clock.ends_at == pytest.approx(100.0 + 5.0 + 6.0)
    now[0] += 3.0
    assert clock.heard_text() == "One two three four."


@pytest.mark.parametrize("words, expected", [
    ("Mm-hmm.", True), ("Okay, yeah.", True), ("uh-huh", True), ("हाँ, ठीक है", True), ("(coughs)", True),
    ("Yes, but what about Germany?", False), ("Stop.", False), ("wait", False)])
def test_what_counts_as_a_backchannel(words, expected):
    assert is_backchannel(words) is expected
