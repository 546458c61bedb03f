"""How bench/quality.py scores one answer: machine-checkable, no judge model.

- correct: one of the prompt's accepted answers (regular expressions, case-insensitive) is in
  the reply; for a request the assistant cannot carry out ("call my sister"), the reply says
  it cannot and claims no action ("I've set a timer", "Sure, playing ...").
- language: the reply's language and script, decided the way the service decides a user's
  (voicebus/language.py): `hi` needs mostly Devanagari letters, `hi-Latn` romanised Hindi
  words in Latin letters, `en` neither.
- length: the number of sentences (voicebus/text.py), for prompts that ask for one.
- speakable: nothing a voice would read out as a symbol: markdown, list markers, code, links,
  emoji.
- loop: the reply repeats a sentence or a phrase (llm_service/run_on.py's rule), or the service
  had to stop it for that (FINISH_REASON_REPETITION).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm_service.run_on import RunOnGuard
from voicebus.language import answer_language
from voicebus.text import split_sentences

_DEVANAGARI = re.compile(r"[\u0900-\u097F]")
_LETTER = re.compile(r"[^\W\d_]")
_UNSPEAKABLE = [
    re.compile(r"[*#`_~|<>\[\]{}\\]"),  # markdown, code, tables
    re.compile(r"(?m)^\s*(?:\d+[.)]|[-•])\s"),  # list markers
    re.compile(r"https?://|www\.|\.com\b", re.I),
    re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B50]"),  # emoji
]
_REFUSAL = re.compile(r"can(?:no|')t|can not|unable|not able|don't have|do not have|no way to|"
                      r"isn't something i can|not something i can|not possible", re.I)
_CLAIMED_ACTION = re.compile(
    r"\bi(?:'ve| have) (?:now )?(?:set|sent|called|ordered|booked|added|turned|opened|started|played)\b|"
    r"\bi(?:'ll| will| am going to) (?:now )?(?:set|send|call|play|order|book|add|turn|open|start)\b|"
    r"\bi can (?:help you )?(?:set|send|call|play|order|book|add|turn|open|start)\b|"
    r"\b(?:playing|calling|dialing|dialling|ordering|booking) (?:now|your|some|a|the)\b", re.I)


@dataclass
class Score:
    correct: bool
    language: str  # the reply's
    language_ok: bool
    sentences: int
    length_ok: bool | None  # None: no length asked for
    speakable: bool
    loop: bool


def reply_language(text: str) -> str:
    if _DEVANAGARI.search(text):
        letters = _LETTER.findall(text)
        share = sum(1 for c in letters if _DEVANAGARI.match(c)) / max(1, len(letters))
        return "hi" if share >= 0.5 else "mixed"
    return answer_language("", text) or "en"


def refuses(text: str) -> bool:
    return bool(_REFUSAL.search(text)) and not _CLAIMED_ACTION.search(text)


def speakable(text: str) -> bool:
    return not any(pattern.search(text) for pattern in _UNSPEAKABLE)


def loops(text: str) -> bool:
    guard = RunOnGuard()
    guard.push(text)
    guard.finish()
    return guard.stopped == "repeated"


def score(prompt: dict, reply: str, stopped_for_repetition: bool = False) -> Score:
    if prompt.get("refuse"):
        correct = refuses(reply)
    elif prompt["accept"]:
        correct = any(re.search(pattern, reply, re.I) for pattern in prompt["accept"])
    else:
        correct = bool(reply.strip())  # open prompts: any answer in the right language
    language = reply_language(reply)
    sentences = len(split_sentences(reply))
    wanted = prompt.get("sentences")
    return Score(correct=correct, language=language, language_ok=language == prompt["language"],
                 sentences=sentences, length_ok=None if not wanted else sentences == wanted,
                 speakable=speakable(reply), loop=stopped_for_repetition or loops(reply))
