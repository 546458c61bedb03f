"""The fakes themselves, through their real stubs, before the orchestrator's tests rely on them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fake_services import FakeLLM, FakeServices, FakeSTT, FakeTTS, Reply, Utterance, pcm16_audio
from voicebus.v1 import audio_pb2, common_pb2, llm_pb2, llm_pb2_grpc, stt_pb2, stt_pb2_grpc, tts_pb2, tts_pb2_grpc

RATE = 16000
PCM16 = audio_pb2.AUDIO_ENCODING_PCM16
STARTED, EOU = stt_pb2.SPEECH_EVENT_TYPE_SPEECH_STARTED, stt_pb2.SPEECH_EVENT_TYPE_END_OF_UTTERANCE
FRANCE = Utterance(start=0.3, end=1.5, text="what is the capital of france",
                   interims=["what is", "what is the capital"], confidence=0.9, language="en")


def config(**fields: object) -> stt_pb2.StreamingTranscribeRequest:
    return stt_pb2.StreamingTranscribeRequest(request_id="rq-1", config=stt_pb2.RecognitionConfig(
        encoding=PCM16, sample_rate_hz=RATE, **fields))  # type: ignore[arg-type]


async def transcribe(address: str, first: stt_pb2.StreamingTranscribeRequest, seconds: float,
                     chunk: float = 0.1) -> list[stt_pb2.StreamingTranscribeResponse]:
    """Config, `seconds` of audio in `chunk` pieces, half-close; every response."""
    async def requests():
        yield first
        for _ in range(round(seconds / chunk)):
            yield stt_pb2.StreamingTranscribeRequest(audio=pcm16_audio(chunk, RATE))

    async with aio.insecure_channel(address) as channel:
        return [r async for r in stt_pb2_grpc.SpeechToTextStub(channel).StreamingTranscribe(requests())]


def described(response: stt_pb2.StreamingTranscribeResponse) -> tuple:
    if response.HasField("event"):
        return ("event", stt_pb2.SpeechEventType.Name(response.event.type), round(response.event.offset_seconds, 6))
    r = response.result
    return ("final" if r.is_final else "interim", r.transcript.text, r.utterance_index)


async def test_stt_one_utterance_in_the_real_services_order():
    stt = FakeSTT(script=[FRANCE], eou_silence=0.5, final_delay=0.01)
    async with FakeServices(stt=stt, llm=None, tts=None) as fakes:
        responses = await transcribe(fakes.addresses["stt"], config(interim_results=True), seconds=2.5)
    assert [described(r) for r in responses] == [
        ("event", "SPEECH_EVENT_TYPE_SPEECH_STARTED", 0.3),
        ("interim", "what is", 0),
        ("interim", "what is the capital", 0),
        ("event", "SPEECH_EVENT_TYPE_END_OF_UTTERANCE", 1.5),
        ("final", "what is the capital of france", 0),
    ]
    stream = stt.streams[0]
    # On the audio timeline: started at 0.3 s, interims spread at 0.7 and 1.1 s, the end once
    # 0.5 s of silence followed the speech (2.0 s), and nothing for the half-close at 2.5 s.
    assert [round(at, 6) for at in stream.sent_at] == [0.3, 0.7, 1.1, 2.0, 2.0]
    assert {r.request_id for r in responses} == {"rq-1"} and {r.model for r in responses} == {"fake-stt"}
    final = responses[-1].result
    assert (final.stability, final.transcript.language_code, final.transcript.no_speech) == (1.0, "en", False)
    assert final.transcript.confidence == pytest.approx(0.9)
    assert (final.transcript.audio_start_seconds, final.transcript.audio_end_seconds) == (0.3, 1.5)
    assert final.latency_seconds > 0  # measured from the audio that ended the speech
    assert responses[2].result.stability == pytest.approx(2 / 4)  # "what is" of "what is the capital"
    assert (stream.config.sample_rate_hz, stream.audio_bytes, stream.messages) == (RATE, 2 * RATE * 25 // 10, 26)
    assert (stream.outcome, stream.half_closed, stream.finals) == ("ok", True, ["what is the capital of france"])

    async with FakeServices(stt=stt, llm=None, tts=None) as fakes, aio.insecure_channel(fakes.addresses["stt"]) as ch:
        whole = await stt_pb2_grpc.SpeechToTextStub(ch).Transcribe(stt_pb2.TranscribeRequest(
            request_id="file", audio=pcm16_audio(2.0, RATE), config=stt_pb2.RecognitionConfig(
                encoding=PCM16, sample_rate_hz=RATE)))
    assert (whole.request_id, whole.transcript.text, whole.audio_duration_seconds, whole.model) == (
        "file", "what is the capital of france", 2.0, "fake-stt")


async def test_stt_half_close_finishes_the_utterance_at_once_and_counts_utterances():
    second = Utterance(start=2.2, end=3.0, text="and of spain", interims=["and of"])
    stt = FakeSTT(script=[FRANCE, second], eou_silence=0.5)
    async with FakeServices(stt=stt, llm=None, tts=None) as fakes:
        # Without interim_results no interim is sent; the half-close at 2.6 s cuts the second one short.
        responses = await transcribe(fakes.addresses["stt"], config(), seconds=2.6)
        silent = await transcribe(fakes.addresses["stt"], config(), seconds=0.2)
    assert [described(r) for r in responses] == [
        ("event", "SPEECH_EVENT_TYPE_SPEECH_STARTED", 0.3),
        ("event", "SPEECH_EVENT_TYPE_END_OF_UTTERANCE", 1.5),
        ("final", "what is the capital of france", 0),
        ("event", "SPEECH_EVENT_TYPE_SPEECH_STARTED", 2.2),
        ("event", "SPEECH_EVENT_TYPE_END_OF_UTTERANCE", 2.6),
        ("final", "and of spain", 1),
    ]
    assert [round(at, 6) for at in stt.streams[0].sent_at[-2:]] == [2.6, 2.6]
    # A stream that heard nobody gets one empty final, like the real service.
    assert [described(r) for r in silent] == [("final", "", 0)]
    assert silent[0].result.transcript.no_speech and silent[0].result.transcript.audio_end_seconds == 0.2


async def stream_status(address: str, requests: list[stt_pb2.StreamingTranscribeRequest]) -> tuple:
    """Writes these, then only reads: what was received, and the status. (A client that goes on
    writing after the server ended the call may see INTERNAL instead of the server's status,
    grpc/grpc#36066, with the real services too; here nothing is written after the fault.)"""
    async with aio.insecure_channel(address) as channel:
        call = stt_pb2_grpc.SpeechToTextStub(channel).StreamingTranscribe()
        for request in requests:
            await call.write(request)
        got = []
        try:
            async with asyncio.timeout(20):  # a fault that never comes fails the test instead of hanging it
                while (response := await call.read()) is not aio.EOF:
                    got.append(described(response))
        except aio.AioRpcError:
            pass  # the status is what this returns
        return got, await call.code(), await call.details()


def audio(seconds: float) -> stt_pb2.StreamingTranscribeRequest:
    return stt_pb2.StreamingTranscribeRequest(audio=pcm16_audio(seconds, RATE))


async def test_stt_faults_abort_streams_as_scripted():
    stt = FakeSTT(script=[FRANCE], fail_on_open=True, fail_times=1,
                  fail_with=(grpc.StatusCode.UNAVAILABLE, "stt instance down"))
    async with FakeServices(stt=stt, llm=None, tts=None) as fakes:
        address = fakes.addresses["stt"]
        assert await stream_status(address, []) == ([], grpc.StatusCode.UNAVAILABLE, "stt instance down")
        healed = await transcribe(address, config(), seconds=2.0)  # fail_times=1: only the first call
        assert [described(r) for r in healed][-1] == ("final", "what is the capital of france", 0)

        stt.fail_on_open, stt.fail_after_messages, stt.fail_times = False, 6, None
        stt.fail_with = (grpc.StatusCode.INTERNAL, "broke mid-stream")
        # The config and 5 pieces of 0.1 s arrive (the speech has started at 0.3 s), then the abort.
        assert await stream_status(address, [config()] + [audio(0.1)] * 5) == (
            [("event", "SPEECH_EVENT_TYPE_SPEECH_STARTED", 0.3)], grpc.StatusCode.INTERNAL, "broke mid-stream")
        got, code, _ = await stream_status(address, [audio(0.1)])
        assert (got, code) == ([], grpc.StatusCode.INVALID_ARGUMENT)
    assert [(s.outcome, s.messages) for s in stt.streams] == [("failed", 0), ("ok", 21), ("failed", 6),
                                                               ("failed", 1)]
    assert stt.streams[2].failure == (grpc.StatusCode.INTERNAL, "broke mid-stream")


def question(text: str = "What is the capital of France?") -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(request_id="turn-7", language_code="en", messages=[
        common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)])


async def generate(address: str, request: llm_pb2.GenerateRequest) -> list[llm_pb2.GenerateResponse]:
    async with aio.insecure_channel(address) as channel:
        return [r async for r in llm_pb2_grpc.LanguageModelStub(channel).Generate(request)]


async def test_llm_streams_scripted_replies_in_order_then_done():
    llm = FakeLLM(replies=[Reply(tokens=["The capital ", "of France ", "is Paris."], first_token_delay=0.01,
                                 token_delay=0.001),
                           Reply.text("Madrid, of course.", provider="groq", model="llama")])
    async with FakeServices(stt=None, llm=llm, tts=None) as fakes:
        first = await generate(fakes.addresses["llm"], question())
        second = await generate(fakes.addresses["llm"], question("And of Spain?"))
        third = await generate(fakes.addresses["llm"], question("Again?"))
    assert [r.delta.text for r in first[:-1]] == ["The capital ", "of France ", "is Paris."]
    done = first[-1].done
    assert first[-1].HasField("done") and {r.request_id for r in first} == {"turn-7"}
    assert (done.finish_reason, done.provider, done.model, done.language_code) == (
        llm_pb2.FINISH_REASON_STOP, "fake", "fake-llm", "en")
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (6, 3)
    assert [r.delta.text for r in second[:-1]] == ["Madrid, ", "of ", "course."]
    assert (second[-1].done.provider, second[-1].done.model) == ("groq", "llama")
    assert [r.delta.text for r in third[:-1]] == ["Madrid, ", "of ", "course."]  # the last reply repeats
    assert [m.content for r in llm.requests for m in r.messages] == [
        "What is the capital of France?", "And of Spain?", "Again?"]
    assert [c.outcome for c in llm.calls] == ["ok", "ok", "ok"]


async def test_llm_failures_and_a_cancelled_call_are_recorded():
    llm = FakeLLM(replies=[
        Reply.text("never said", fail_before_first=grpc.StatusCode.UNAVAILABLE),
        Reply.text("Paris is the capital.", fail_after=2, fail_with=(grpc.StatusCode.UNAVAILABLE, "cut")),
        Reply.text("A long answer that the user interrupts.", hold_after=1)])
    async with FakeServices(stt=None, llm=llm, tts=None) as fakes:
        address = fakes.addresses["llm"]
        with pytest.raises(aio.AioRpcError) as before:
            await generate(address, question())
        assert before.value.code() == grpc.StatusCode.UNAVAILABLE

        async with aio.insecure_channel(address) as channel:
            call = llm_pb2_grpc.LanguageModelStub(channel).Generate(question())
            deltas = []
            with pytest.raises(aio.AioRpcError) as after:
                async for response in call:
                    deltas.append(response.delta.text)
            assert (after.value.code(), after.value.details(), deltas) == (
                grpc.StatusCode.UNAVAILABLE, "cut", ["Paris ", "is "])

            held = llm_pb2_grpc.LanguageModelStub(channel).Generate(question())
            assert (await held.read()).delta.text == "A "
            held.cancel()  # a barge-in
            await llm.wait_until(lambda: llm.cancelled == 1, "the cancel reaching the fake")
    assert [(c.outcome, c.tokens_sent) for c in llm.calls] == [("failed", 0), ("failed", 2), ("cancelled", 1)]
    assert llm.calls[2].text_sent == "A "


async def speak(address: str, pieces: list[str], **fields: object) -> list[tts_pb2.StreamingSynthesizeResponse]:
    async def requests():
        yield tts_pb2.StreamingSynthesizeRequest(request_id="turn-9", config=tts_pb2.SynthesisConfig(
            language_code="en", **fields))  # type: ignore[arg-type]
        for piece in pieces:
            yield tts_pb2.StreamingSynthesizeRequest(text=piece)

    async with aio.insecure_channel(address) as channel:
        return [r async for r in tts_pb2_grpc.TextToSpeechStub(channel).StreamingSynthesize(requests())]


async def test_tts_cuts_sentences_like_the_real_service_with_audio_of_the_scripted_length():
    tts = FakeTTS(seconds_per_word=0.3, synth_delay=0.005)
    pieces = ["Sure, the capital of ", "France is Paris. It is", " lovely in spring! ...", " Bye"]
    async with FakeServices(stt=None, llm=None, tts=tts) as fakes:
        responses = await speak(fakes.addresses["tts"], pieces)
    spoken = [r.sentence for r in responses]
    # The first piece may end at a clause of 4 words; "..." alone says nothing and is skipped.
    assert [(s.sentence_index, s.text, s.audio.sequence) for s in spoken] == [
        (0, "Sure, the capital of France is Paris.", 0), (1, "It is lovely in spring!", 1), (3, "Bye", 2)]
    assert [len(s.audio.data) for s in spoken] == [2 * round(7 * 0.3 * 22050), 2 * round(5 * 0.3 * 22050),
                                                   2 * round(0.3 * 22050)]
    assert [round(s.audio.duration_seconds, 6) for s in spoken] == [2.1, 1.5, 0.3]
    assert {(s.engine, s.voice, s.audio.format.encoding, s.audio.format.sample_rate_hz, s.audio.format.channels)
            for s in spoken} == {("fake", "fake-voice", PCM16, 22050, 1)}
    assert {r.request_id for r in responses} == {"turn-9"}
    call = tts.calls[0]
    assert (call.texts, call.outcome, call.half_closed) == (pieces, "ok", True)
    assert call.sentences == ["Sure, the capital of France is Paris.", "It is lovely in spring!", "Bye"]


async def test_tts_unary_faults_and_voices():
    tts = FakeTTS(seconds_per_word=0.1, fail_after_sentences=1, fail_times=1)
    async with FakeServices(stt=None, llm=None, tts=tts) as fakes:
        async with aio.insecure_channel(fakes.addresses["tts"]) as channel:
            stub = tts_pb2_grpc.TextToSpeechStub(channel)
            request = tts_pb2.SynthesizeRequest(request_id="r", text="One two. Three four five.",
                                                config=tts_pb2.SynthesisConfig(sample_rate_hz=16000))
            got = []
            with pytest.raises(aio.AioRpcError) as broken:
                async for response in stub.Synthesize(request):
                    got.append(response.sentence.text)
            assert (broken.value.code(), got) == (grpc.StatusCode.UNAVAILABLE, ["One two."])
            whole = [r.sentence async for r in stub.Synthesize(request)]
            assert [(s.text, len(s.audio.data)) for s in whole] == [("One two.", 2 * 3200), ("Three four five.",
                                                                                            2 * 4800)]
            with pytest.raises(aio.AioRpcError) as empty:
                await speak(fakes.addresses["tts"], [" "])
            assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            voices = await stub.ListVoices(tts_pb2.ListVoicesRequest(language_code="hi"))
            assert [(v.engine, v.name) for v in voices.voices] == [("fake", "fake-voice")]
    assert [(c.kind, c.outcome) for c in tts.calls] == [("unary", "failed"), ("unary", "ok"), ("stream", "failed")]


async def health(address: str, wait: bool = False) -> str:
    """With `wait`, through the channel's reconnection (gRPC backs off about 1 s after a refused
    connection, and channels to one address share that state)."""
    async with aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=20 if wait else 5, wait_for_ready=wait)
        except aio.AioRpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_services_serve_health_and_come_back_on_the_same_port():
    async with FakeServices(stt_backup=FakeSTT()) as fakes:
        addresses = fakes.addresses
        assert sorted(addresses) == ["llm", "stt", "stt_backup", "tts"]
        assert len(set(addresses.values())) == 4
        assert [await health(a) for a in addresses.values()] == ["SERVING"] * 4
        await generate(addresses["llm"], question())
        await fakes.stop("llm")
        assert await health(addresses["llm"]) == "UNAVAILABLE"
        with pytest.raises(aio.AioRpcError) as down:
            await generate(addresses["llm"], question())
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        await fakes.restart("llm")
        assert fakes.addresses["llm"] == addresses["llm"]
        assert await health(addresses["llm"], wait=True) == "SERVING"
        assert (await generate(addresses["llm"], question()))[-1].HasField("done")
        assert [c.outcome for c in fakes.llm.calls] == ["ok", "ok"]  # what it recorded survived the outage
    assert await health(addresses["stt"]) == "UNAVAILABLE"


def test_this_folder_does_not_hide_the_real_orchestrator_package():
    import orchestrator

    assert Path(orchestrator.__file__).resolve() == Path(__file__).resolve().parents[2] / "orchestrator" / "__init__.py"


async def test_the_default_fakes_make_one_whole_turn(fake_services):
    heard = await transcribe(fake_services.addresses["stt"], config(), seconds=2.0)
    text = heard[-1].result.transcript.text
    answer = await generate(fake_services.addresses["llm"], question(text))
    reply = "".join(r.delta.text for r in answer[:-1])
    spoken = await speak(fake_services.addresses["tts"], [reply])
    assert (text, reply, [r.sentence.text for r in spoken]) == (
        "what is the capital of france", "The capital of France is Paris.", ["The capital of France is Paris."])
    assert fake_services.tts.calls[0].audio_bytes == 2 * round(6 * 0.3 * 22050)
