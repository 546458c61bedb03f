"""Exact event sequences and stored rows of turns, with scripted fake services (no model)."""

from __future__ import annotations

import pytest

from fake_services import FakeLLM, FakeServices, FakeSTT, FakeTTS, Reply, Utterance, pcm16_audio
from orchestra import Orchestra, speech, audio, config, end_of_audio, kinds, text
from voicebus.v1 import assistant_pb2

PARIS = "The capital of France is Paris."
COMPLETED = assistant_pb2.TURN_OUTCOME_COMPLETED


async def test_typed_turn_sequence_row_and_nats(nats_url):
    async with Orchestra(FakeServices(llm=FakeLLM([Reply.text(PARIS)])), nats_url) as o:
        events = await o.converse(config(), text("What is the capital of France?"))
        assert kinds(events) == ["conversation_opened", "turn_started", "response_delta", "audio", "turn_completed"]
        done = events[-1].turn_completed.turn
        assert done.outcome == COMPLETED and done.assistant_text == PARIS and done.user_text.startswith("What")
        assert len({e.turn_id for e in events[1:]}) == 1 and all(e.trace_id == done.trace_id for e in events[1:])
        stored = await o.stored(events[0].conversation_id)
        assert [(t.user_text, t.assistant_text, t.outcome, t.index) for t in stored.turns] == [
            ("What is the capital of France?", PARIS, COMPLETED, 0)]
        stages = await o.nats_stages(done.turn_id, until="turn_completed")
        # first audio and the end of the LLM's answer race each other; all else is in order
        assert stages[:2] == ["turn_started", "transcript_final"] and stages[-1] == "turn_completed", stages
        assert sorted(stages[2:-1]) == ["first_audio_sent", "response_completed"], stages
        assert o.fakes.llm.requests[-1].messages[-1].content == "What is the capital of France?"


async def test_spoken_turn_sequence(nats_url):
    stt = FakeSTT([Utterance(0.2, 1.0, "what is the capital of france", interims=["what is"])])
    async with Orchestra(FakeServices(stt=stt, llm=FakeLLM([Reply.text(PARIS)])), nats_url) as o:
        events = await o.converse(config(), *speech(1.0), end_of_audio())
        assert kinds(events) == ["conversation_opened", "turn_started", "speech_started", "transcript_interim",
                                 "transcript_final", "response_delta", "audio", "turn_completed"]
        turn = events[-1].turn_completed.turn
        assert turn.user_text == "what is the capital of france" and turn.assistant_text == PARIS
        assert turn.providers.stt_model == "fake-stt" and turn.timings.first_audio_seconds > 0
        stored = await o.stored(events[0].conversation_id)
        assert [t.turn_id for t in stored.turns] == [turn.turn_id]
