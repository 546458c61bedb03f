"""The answer's audio format over REST, against the real stack: MP3, Ogg/Opus, WAV and PCM16
from TTS's encoders, picked by `output_format` (JSON or query), `output_sample_rate`, or the
Accept header, each decoded here; a format or rate we cannot make is a 422 before any turn."""

from __future__ import annotations

import base64
import io
import wave

import av
import httpx
import pytest

from gateway_stack import AUTH, QUESTION, shared_stack, speech_wav


@pytest.fixture(scope="module")
def client(nats_server, request):
    stack = shared_stack(nats_server.url, request.config)
    with httpx.Client(base_url=stack.base, timeout=180, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory):
    return speech_wav(QUESTION, tmp_path_factory.mktemp("formats") / "q.wav", tail_silence=0.3).read_bytes()


def decoded(data: bytes) -> tuple[str, int, float]:
    """(container, sample rate, seconds) of encoded audio, as FFmpeg decodes it."""
    with av.open(io.BytesIO(data)) as container:
        samples, rate = 0, 0
        for frame in container.decode(audio=0):
            samples += frame.samples
            rate = frame.sample_rate
        return container.format.name, rate, samples / rate if rate else 0.0


def answer(reply: httpx.Response) -> tuple[bytes, str]:
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["outcome"] == "completed" and body["response"].strip(), body
    return base64.b64decode(body["audio_output"]), body["audio_mime"]


def test_chat_answers_in_mp3_at_the_rate_asked(client):
    audio, mime = answer(client.post("/api/chat", json={"text": "Say hello to me.", "output_format": "mp3",
                                                        "output_sample_rate": 16000}))
    assert mime == "audio/mpeg"
    container, rate, seconds = decoded(audio)
    assert container == "mp3" and rate == 16000 and seconds > 0.3, (container, rate, seconds)


def test_chat_answers_in_ogg_opus(client):
    audio, mime = answer(client.post("/api/chat", json={"text": "Name a colour.", "output_format": "ogg",
                                                        "output_sample_rate": 48000}))
    assert mime == "audio/ogg" and audio[:4] == b"OggS"
    container, rate, seconds = decoded(audio)
    assert container == "ogg" and rate == 48000 and seconds > 0.3, (container, rate, seconds)


def test_pcm16_says_its_rate_and_its_length_fits(client):
    audio, mime = answer(client.post("/api/chat", json={"text": "Name a fruit.", "output_format": "pcm16",
                                                        "output_sample_rate": 16000}))
    assert mime == "audio/L16;rate=16000"
    assert len(audio) % 2 == 0 and 0.3 < len(audio) / 2 / 16000 < 120, len(audio)
    assert audio[:4] not in (b"RIFF", b"OggS", b"ID3\x03")  # raw samples, no container


def test_process_audio_query_parameters_and_accept_header(client, question_wav):
    upload = {"file": ("q.wav", question_wav, "audio/wav")}
    audio, mime = answer(client.post("/api/process_audio?output_format=ogg", files=upload))
    assert mime == "audio/ogg" and decoded(audio)[0] == "ogg" and decoded(audio)[2] > 0.3
    # Accept picks MP3 when no parameter says otherwise ...
    audio, mime = answer(client.post("/api/process_audio", files=upload,
                                     headers={"Accept": "audio/mpeg, application/json;q=0.5"}))
    container, rate, seconds = decoded(audio)
    assert mime == "audio/mpeg" and container == "mp3" and seconds > 0.3
    # ... and the parameter wins over Accept; WAV at the rate asked.
    audio, mime = answer(client.post("/api/process_audio?output_format=wav&output_sample_rate=22050", files=upload,
                                     headers={"Accept": "audio/mpeg"}))
    assert mime == "audio/wav"
    with wave.open(io.BytesIO(audio)) as w:
        assert w.getframerate() == 22050 and w.getnframes() / 22050 > 0.3


BAD_FORMATS = {
    "unknown format in JSON": ("/api/chat", {"json": {"text": "hi", "output_format": "aac"}}, "invalid_format", "aac"),
    "webm is not a REST answer": ("/api/chat", {"json": {"text": "hi", "output_format": "webm"}}, "invalid_format",
                                  "mp3, wav, ogg, pcm16"),
    "odd rate": ("/api/chat", {"json": {"text": "hi", "output_format": "mp3", "output_sample_rate": 12345}},
                 "invalid_format", "12345"),
    "ogg at 16 kHz": ("/api/chat", {"json": {"text": "hi", "output_format": "ogg", "output_sample_rate": 16000}},
                      "invalid_format", "24000, 48000"),
    "negative rate": ("/api/chat", {"json": {"text": "hi", "output_sample_rate": -1}}, "invalid_format", "-1"),
    "format not a string": ("/api/chat", {"json": {"text": "hi", "output_format": 3}}, "invalid_request",
                            "output_format"),
    "unknown format in the query": ("/api/process_audio?output_format=flac", {"content": b"RIFF"},
                                    "invalid_format", "flac"),
    "rate not a number": ("/api/process_audio?output_sample_rate=fast", {"content": b"RIFF"}, "invalid_request",
                          "output_sample_rate"),
}


@pytest.mark.parametrize("case", sorted(BAD_FORMATS))
def test_a_format_we_cannot_make_is_a_422_with_words(client, case):
    path, kwargs, code, said = BAD_FORMATS[case]
    reply = client.post(path, **kwargs)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and said in error["message"], error
