"""The orchestrator on PostgreSQL through a database outage (scripted fakes, a real PostgreSQL
and NATS): while the database is down, calls that need it end UNAVAILABLE with the store's
message and nothing else; when it returns, the same conversation goes on, nothing stored
before is lost and nothing is stored twice."""

from __future__ import annotations

import asyncio

import grpc

from fake_services import FakeLLM, FakeServices, Reply
from orchestra import Orchestra, config, kinds, text
from voicebus.v1 import assistant_pb2

FIRST, SECOND = "The capital of France is Paris.", "The capital of Italy is Rome."
COMPLETED = assistant_pb2.TURN_OUTCOME_COMPLETED


async def test_a_database_outage_is_unavailable_and_the_conversation_goes_on_when_it_returns(nats_url, postgres):
    llm = FakeLLM([Reply.text(FIRST), Reply.text(SECOND)])
    async with Orchestra(FakeServices(llm=llm), nats_url, database_url=postgres.create_database()) as o:
        first = await o.converse(config(), text("What is the capital of France?"))
        assert kinds(first)[-1] == "turn_completed"
        cid = first[0].conversation_id

        await asyncio.to_thread(postgres.stop)
        try:
            for call in (o.stub.GetConversation(assistant_pb2.GetConversationRequest(conversation_id=cid)),
                         o.converse(config(cid), text("And of Italy?"))):
                details = await o.expect_status(call, grpc.StatusCode.UNAVAILABLE)
                assert details.startswith("the conversation store is unavailable"), details
                assert postgres.password not in details
        finally:
            await asyncio.to_thread(postgres.start)

        again = await o.converse(config(cid), text("And of Italy?"))
        assert kinds(again)[0] == "conversation_opened" and kinds(again)[-1] == "turn_completed"
        assert again[0].conversation_opened.turn_count == 1
        stored = await o.stored(cid)
        assert [(t.user_text, t.assistant_text, t.outcome, t.index) for t in stored.turns] == [
            ("What is the capital of France?", FIRST, COMPLETED, 0), ("And of Italy?", SECOND, COMPLETED, 1)]
        # the model saw the history of the turn stored before the outage
        assert [m.content for m in llm.requests[-1].messages][-3:] == [
            "What is the capital of France?", FIRST, "And of Italy?"]
