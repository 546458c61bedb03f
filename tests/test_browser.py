"""The page in a real browser: Debian's Chromium driven by Playwright, its fake microphone
playing espeak-ng speech, against the real stack behind the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from gateway_stack import AUTH, QUESTION, TOKEN, output_dir, shared_stack, speech_wav
from helpers import word_error_rate

CHROMIUM = "/usr/bin/chromium"
LEAD_SILENCE, TAIL_SILENCE = 0.4, 2.5


@pytest.fixture(scope="module")
def stack(nats_server, request):
    return shared_stack(nats_server.url, request.config)


@pytest.fixture(scope="module")
def mic_wav():
    # Chromium loops the file: silence after the question keeps the loop from speaking it
    # twice while the button is held.
    return speech_wav(QUESTION, output_dir("browser") / "mic.wav", LEAD_SILENCE, TAIL_SILENCE)


@contextlib.asynccontextmanager
async def chromium(mic_wav: Path) -> AsyncIterator[Browser]:
    """Chromium whose (fake) microphone plays `mic_wav`, looping, for the browser's lifetime."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
            "--autoplay-policy=no-user-gesture-required"])
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
async def browser(mic_wav):
    async with chromium(mic_wav) as browser:
        yield browser


async def open_page(browser: Browser, base: str, token: str | None, **context_args) -> Page:
    context = await browser.new_context(permissions=["microphone"], **context_args)
    if token:
        await context.add_init_script(f"localStorage.setItem('voicebus.token', {json.dumps(token)})")
    page = await context.new_page()
    page.on("console", lambda m: m.type == "error" and print("browser console:", m.text))
    await page.goto(base)
    return page


async def state(page: Page) -> dict:
    """The page's state for assertions and their messages. `recentEvents` is only the log's tail:
    order checks read one turn's complete list with `turn_events`."""
    return await page.evaluate("""() => {
        const {events, turnEvents, ...rest} = window.voicebus;
        return {...rest, recentEvents: events.slice(-40)};
    }""")


async def turn_events(page: Page, turn_id: str) -> list[str]:
    return await page.evaluate("(id) => window.voicebus.turnEvents[id] || []", turn_id)


def speech_seconds(path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate() - TAIL_SILENCE


async def press_talk(page: Page) -> None:
    box = await page.get_by_test_id("talk-button").bounding_box()
    assert box
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.down()


async def keep_talking(page: Page, seconds: float) -> None:
    # The page records only once the microphone and the socket are ready, which takes longer
    # on a busy machine: the hold is counted from then, or the question's end is cut off.
    await page.wait_for_function("() => window.voicebus.state === 'listening'", timeout=30_000)
    await asyncio.sleep(seconds)
    await page.mouse.up()


async def hold_talk(page: Page, seconds: float) -> None:
    await press_talk(page)
    await keep_talking(page, seconds)


async def test_page_asks_for_the_token_and_then_connects(stack, browser):
    page = await open_page(browser, stack.base, token=None)
    dialog = page.get_by_test_id("token-dialog")
    await dialog.wait_for(state="visible", timeout=15_000)
    await page.get_by_test_id("token-input").fill(TOKEN)
    await page.get_by_test_id("token-save").click()
    await page.wait_for_function("() => window.voicebus.state === 'idle'", timeout=15_000)
    assert await page.evaluate("() => localStorage.getItem('voicebus.token')") == TOKEN
    await page.context.close()


async def test_push_to_talk_shows_transcript_answer_and_plays_audio(stack, browser, mic_wav):
    page = await open_page(browser, stack.base, token=TOKEN, viewport={"width": 1280, "height": 800})
    await page.wait_for_function("() => window.voicebus.state === 'idle'", timeout=15_000)
    await hold_talk(page, speech_seconds(mic_wav) + 0.6)
    try:
        await page.wait_for_function("() => window.voicebus.turnsFinished >= 1", timeout=120_000)
        await page.wait_for_function("() => window.voicebus.chunksPlayed > 0", timeout=60_000)
    finally:
        await page.screenshot(path=str(output_dir("browser") / "push-to-talk.png"))
    vb = await state(page)
    assert not vb["errors"], vb["errors"]
    # Streamed WebM/Opus through the streaming recognizer: one word may be missed.
    assert word_error_rate(QUESTION, vb["lastTranscript"]) <= 0.34, vb
    assert vb["lastResponse"].strip(), vb
    assert vb["lastTurn"]["outcome"] == "completed", vb
    # This turn's own events, all of them: a long answer's deltas and audio cannot push its
    # transcript out (a 40-event tail of the page's log did, issue 18).
    events = await turn_events(page, vb["lastTurn"]["turn_id"])
    assert events[0] == "turn_started" and events.count("turn_completed") == 1, events
    assert events[-1] == "turn_completed", events
    last_transcript = len(events) - 1 - events[::-1].index("transcript")
    assert last_transcript < events.index("response_delta") < events.index("audio"), events
    assert "capital" in (await page.get_by_test_id("user-text").last.inner_text()).lower()
    assert (await page.get_by_test_id("assistant-text").last.inner_text()).strip() == vb["lastResponse"].strip()
    assert "total" in await page.get_by_test_id("turn-timings").last.inner_text()
    # The new conversation shows up in the list, marked as the current one.
    current = page.locator("[data-testid=conversation].current")
    await current.wait_for(timeout=10_000)
    assert await current.get_attribute("data-id") == vb["conversationId"]

    # Barge-in: a typed question, then talking over its spoken answer.
    await page.wait_for_function("() => window.voicebus.state === 'idle'", timeout=60_000)
    sent = (await state(page))["interruptsSent"]
    await page.get_by_test_id("text-input").fill("Tell me a long story about a brave dragon and a knight.")
    await page.get_by_test_id("text-input").press("Enter")
    await page.wait_for_function("() => window.voicebus.playing", timeout=120_000)
    await press_talk(page)
    # Local playback stops at once, without waiting for the server.
    after = await page.evaluate("() => ({playing: window.voicebus.playing, sent: window.voicebus.interruptsSent,"
                                " cut: window.voicebus.lastBargeIn})")
    assert after["playing"] is False and after["sent"] == sent + 1, after
    assert after["cut"] and after["cut"]["playing"], after
    await keep_talking(page, speech_seconds(mic_wav) + 0.6)
    # The page plays in real time ("playback": "realtime"), so the server's turn lasts while its
    # audio plays: pressing during the playout is a barge-in there too, however early the
    # answer was sent, and the page has told the server how far it got.
    assert after["cut"]["turnRunning"], after
    await page.wait_for_function("() => window.voicebus.interruptions >= 1", timeout=30_000)
    assert (await state(page))["playbackReports"] > 0
    await page.wait_for_function("() => window.voicebus.state === 'idle' || window.voicebus.state === 'speaking'",
                                 timeout=120_000)
    await page.screenshot(path=str(output_dir("browser") / "barge-in.png"))

    # The same page on a phone-sized screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    await asyncio.sleep(0.5)  # let the drawer's slide-out transition finish
    await page.screenshot(path=str(output_dir("browser") / "phone.png"))
    # The barge-in recording holds whatever part of Chromium's looping fake microphone was
    # playing: when that was the silence, "nothing was heard" is the right answer.
    errors = [e for e in (await state(page))["errors"] if not e.startswith("Nothing was heard")]
    assert not errors, errors
    await page.context.close()


# ---- hands-free ---------------------------------------------------------------------------
SECOND_QUESTION = "How many legs does a spider have?"
STORY_REQUEST = "Tell me a long story about a brave dragon and a knight."
SHORT_STORY_REQUEST = "Tell me a story about a dragon in three sentences."


def spoken_sequence(path: Path, *parts: str | float) -> Path:
    """One WAV of espeak-ng phrases (str) and silences (float, seconds), in order."""
    rate, pcm = None, b""
    with tempfile.TemporaryDirectory() as tmp:
        for i, part in enumerate(parts):
            if isinstance(part, str):
                with wave.open(str(speech_wav(part, Path(tmp) / f"{i}.wav"))) as w:
                    rate = rate or w.getframerate()
                    assert w.getframerate() == rate
                    pcm += w.readframes(w.getnframes())
            else:
                pcm += b"\0\0" * int((rate or 22050) * part)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate or 22050)
        w.writeframes(pcm)
    return path


def stored_turns(stack, conversation_id: str) -> list[dict]:
    reply = httpx.get(f"{stack.base}/api/conversations/{conversation_id}", headers=AUTH, timeout=10)
    reply.raise_for_status()
    return reply.json()["turns"]


async def turn_on_hands_free(page: Page) -> None:
    await page.wait_for_function("() => window.voicebus.state === 'idle'", timeout=15_000)
    await page.get_by_test_id("handsfree-toggle").click()
    await page.wait_for_function("() => window.voicebus.microphone === 'live'", timeout=15_000)
    assert await page.get_by_test_id("talk-button").is_disabled()


async def turn_off_hands_free(page: Page) -> None:
    await page.get_by_test_id("handsfree-toggle").click()
    vb = await state(page)
    assert vb["handsFree"] is False and vb["microphone"] == "ended", vb
    assert await page.get_by_test_id("talk-button").is_enabled()
    assert await page.get_by_test_id("handsfree-toggle").get_attribute("aria-pressed") == "false"


@contextlib.asynccontextmanager
async def hands_free_page(stack, wav: Path, done: str, timeout_ms: int) -> AsyncIterator[Page]:
    """The page in hands-free mode with `wav` as its microphone, once the JS condition `done` holds
    (a screenshot is kept either way)."""
    async with chromium(wav) as browser:
        page = await open_page(browser, stack.base, token=TOKEN, viewport={"width": 1280, "height": 800})
        await turn_on_hands_free(page)
        try:
            await page.wait_for_function(done, timeout=timeout_ms)
        finally:
            await page.screenshot(path=str(output_dir("browser") / wav.with_suffix(".png").name))
        yield page
        await page.context.close()


async def test_hands_free_answers_each_utterance_without_push_to_talk(stack):
    # Each answer must have played before the next question starts (or the question would be
    # a barge-in), and the second before Chromium's loop says the first question again.
    wav = spoken_sequence(output_dir("browser") / "hands-free.wav", 0.4, QUESTION, 25.0, SECOND_QUESTION, 25.0)
    async with hands_free_page(stack, wav, "() => window.voicebus.turnsFinished >= 2 && !window.voicebus.playing",
                               timeout_ms=150_000) as page:
        vb = await state(page)
        assert not vb["errors"], vb["errors"]
        # The server's VAD ended both utterances; the page neither ended nor interrupted one.
        assert vb["endOfAudioSent"] == 0 and vb["interruptsSent"] == 0, vb
        assert vb["interruptions"] == 0 and vb["pauses"] == 0, vb
        turns = stored_turns(stack, vb["conversationId"])
        assert len(turns) == 2, turns
        shown = await page.get_by_test_id("user-text").all_inner_texts()
        answers = await page.get_by_test_id("assistant-text").all_inner_texts()
        assert len(shown) == 2, shown
        for question, turn, text, answer in zip((QUESTION, SECOND_QUESTION), turns, shown, answers, strict=True):
            assert turn["outcome"] == "completed" and not turn["interrupted"], turn
            assert word_error_rate(question, turn["user_text"]) <= 0.34, (question, turn)
            assert word_error_rate(question, text) <= 0.34, (question, text)
            assert turn["assistant_text"].strip() and answer.strip() == turn["assistant_text"].strip(), (turn, answer)
            events = await turn_events(page, turn["turn_id"])
            assert events[0] == "turn_started" and events[-1] == "turn_completed", events
            assert "transcript" in events and "audio" in events, events
        # Every chunk received was played to its end (none dropped, none cut).
        assert vb["chunksPlayed"] == vb["chunksReceived"] > 0, vb
        await turn_off_hands_free(page)


async def test_hands_free_speech_over_the_answer_interrupts_it(stack):
    # The second question starts while the story is being told: once the first transcript is
    # final (STT needs about a second) and long before a story's audio can have played.
    wav = spoken_sequence(output_dir("browser") / "barge-in.wav", 0.4, STORY_REQUEST, 5.0, QUESTION, 25.0)
    done = "() => window.voicebus.interruptions >= 1 && window.voicebus.turnsFinished >= 1 && !window.voicebus.playing"
    async with hands_free_page(stack, wav, done, timeout_ms=150_000) as page:
        vb = await state(page)
        assert not vb["errors"], vb["errors"]
        # The server decided the barge-in from the voice: the page sent nothing for it.
        assert vb["interruptsSent"] == 0 and vb["endOfAudioSent"] == 0, vb
        assert vb["pauses"] >= 1 and vb["resumes"] == 0, vb
        # The story was still playing when the server said stop, and the page went silent at once.
        assert vb["playingAfterInterrupt"] == [False], vb
        assert vb["chunksPlayed"] < vb["chunksReceived"], vb
        story, answered = stored_turns(stack, vb["conversationId"])[:2]
        assert story["interrupted"], story
        story_events = await turn_events(page, story["turn_id"])
        assert "playback_paused" in story_events and story_events[-1] == "turn_interrupted", story_events
        assert story_events.index("playback_paused") < story_events.index("turn_interrupted"), story_events
        assert answered["outcome"] == "completed" and not answered["interrupted"], answered
        assert word_error_rate(QUESTION, answered["user_text"]) <= 0.34, answered
        assert answered["assistant_text"].strip(), answered
        answered_events = await turn_events(page, answered["turn_id"])
        assert "audio" in answered_events and answered_events[-1] == "turn_completed", answered_events
        await turn_off_hands_free(page)


async def test_hands_free_backchannel_over_the_answer_pauses_and_resumes_it(stack):
    # "Okay." comes while the story is being answered; the long silence after it keeps
    # Chromium's loop from asking for the story again before the test ends.
    wav = spoken_sequence(output_dir("browser") / "backchannel.wav", 0.4, SHORT_STORY_REQUEST, 6.0, "Okay.", 90.0)
    done = "() => window.voicebus.resumes >= 1 && window.voicebus.turnsFinished >= 1 && !window.voicebus.playing"
    async with hands_free_page(stack, wav, done, timeout_ms=150_000) as page:
        vb = await state(page)
        assert not vb["errors"], vb["errors"]
        assert vb["pauses"] == vb["resumes"] >= 1 and vb["interruptions"] == 0, vb
        # Nothing was answered or stored for "Okay.", and the story played to its end.
        (story,) = stored_turns(stack, vb["conversationId"])
        assert story["outcome"] == "completed" and not story["interrupted"], story
        assert vb["chunksPlayed"] == vb["chunksReceived"] > 0, vb
        assert len(await page.get_by_test_id("user-text").all_inner_texts()) == 1
        events = await turn_events(page, story["turn_id"])
        assert events.index("playback_paused") < events.index("playback_resumed") < events.index("turn_completed")
        await turn_off_hands_free(page)
