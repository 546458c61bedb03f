"""An answer that never runs on: it stops when it starts to repeat itself, and a spoken
answer stops after a number of sentences.

Small models loop: "Tell me about the history of Rome." came back as one sentence said
again until the token cap, "bharat ki rajdhani kya hai?" as the question echoed 25 times.
`RunOnGuard` sits between the provider's deltas and the client:
- a sentence that says again an earlier sentence of the same answer is not sent, and the
  generation stops there. While the sentence being written still reads like the start of
  an earlier one, its text is held back, so a repetition is never half-spoken; the first
  sentence, and any that says something new, go out delta by delta as before.
- a phrase looping inside a sentence (the same `LOOP_WORDS` words a `LOOP_TIMES`-th time)
  stops it as well (the sentence splitter cuts one that never ends at 300 characters);
- after `max_sentences` complete sentences it stops (0 = no limit): answers are heard,
  and a token cap alone cuts a long one mid-word.
"""

from __future__ import annotations

import re

from voicebus.text import SentenceSplitter

LOOP_WORDS, LOOP_TIMES = 4, 3
_WORD = re.compile(r"[^\s.,!?;:\"“”‘’()\[\]…।॥*_`~#|<>-]+")


def normalised(text: str) -> str:
    """The words of a text, lower case, one space apart: what makes two sentences the same."""
    return " ".join(_WORD.findall(text.lower()))


class RunOnGuard:
    """Feed it the deltas in order (`push`), then `finish()` at the end of the stream; each
    returns the text to send now. Once `stopped` is set ("repeated" or "sentences"), the
    generation should be ended and nothing more is returned."""

    def __init__(self, max_sentences: int = 0) -> None:
        self.max_sentences = max_sentences
        self.stopped: str | None = None
        self.sentences = 0
        self._splitter = SentenceSplitter(first_clause_min_words=10**9)
        self._text = ""  # everything the provider wrote
        self._sent = 0  # how much of _text went out
        self._done = 0  # where the last complete sentence ends in _text
        self._said: list[str] = []  # the complete sentences, normalised

    def push(self, delta: str) -> str:
        if self.stopped:
            return ""
        self._text += delta
        for sentence in self._splitter.push(delta):
            if not self._sentence_done(sentence):
                return self._release(self._done)
        if self._loops():
            self.stopped = "repeated"
            return self._release(self._sent)
        tail = normalised(self._text[self._done:])
        held = bool(tail) and any(earlier.startswith(tail) for earlier in self._said)
        return self._release(self._done if held else len(self._text))

    def finish(self) -> str:
        """The rest at the end of the stream (a last sentence without a full stop, a held start)."""
        if self.stopped:
            return ""
        self.max_sentences = 0  # the answer ended by itself: its last sentence is no cut
        if self._loops(final=True):
            self.stopped = "repeated"
            return ""
        for sentence in self._splitter.flush():
            if not self._sentence_done(sentence):
                return self._release(self._done)
        return self._release(len(self._text))

    def _sentence_done(self, sentence: str) -> bool:
        """Records a complete sentence; False when the answer must stop before it."""
        end = self._text.find(sentence, self._done) + len(sentence)
        words = normalised(sentence)
        if words and words in self._said:
            self.stopped = "repeated"
            return False
        self._said.append(words)
        self._done = end
        self.sentences += 1
        if self.max_sentences and self.sentences >= self.max_sentences:
            self.stopped = "sentences"
            return False
        return True

    def _loops(self, final: bool = False) -> bool:
        """The sentence being written holds the same LOOP_WORDS words LOOP_TIMES times (sentences
        alike are the repeated-sentence check's: "This is step 1. This is step 2." is no loop)."""
        tail = self._text[self._done:]
        words = normalised(tail).split()
        if not final and not tail[-1:].isspace():
            words = words[:-1]  # the last word may be unfinished
        seen: dict[tuple[str, ...], int] = {}
        for end in range(LOOP_WORDS, len(words) + 1):
            gram = tuple(words[end - LOOP_WORDS:end])
            seen[gram] = seen.get(gram, 0) + 1
            if seen[gram] >= LOOP_TIMES:
                return True
        return False

    def _release(self, upto: int) -> str:
        upto = max(upto, self._sent)
        out, self._sent = self._text[self._sent:upto], upto
        return out
