"""Cutting streamed text into speakable pieces.

`SentenceSplitter` takes text deltas as an LLM writes them and yields each sentence as
soon as it is complete, so speech can start before the answer is finished. The first
piece may end at a clause (a comma after a few words): the first audio is what the
user waits for.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?।॥…]+[\"')\]]*(?=\s)|\n+")
_CLAUSE_END = re.compile(r"[,;:—–](?=\s)")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "no", "jr", "sr"}


def _is_abbreviation(text: str, end: int) -> bool:
    """A full stop that ends no sentence: "Dr.", an initial ("J. K."), a list's "1." marker.
    A number ending a sentence ("built in 1492.") and the pronoun or numeral "I" end one."""
    word = re.findall(r"[\w.]+$", text[:end].rstrip(".!?"))
    if not word:
        return False
    w = word[-1].lower()
    if w.replace(".", "").isdigit():
        return not text[:end - 1].strip().replace(w, "", 1).strip()  # only the number so far: "1."
    return w in _ABBREVIATIONS or (len(w) == 1 and w.isalpha() and w != "i")


class SentenceSplitter:
    def __init__(self, first_clause_min_words: int = 4, max_chars: int = 300) -> None:
        self._buffer = ""
        self._emitted = 0
        self.first_clause_min_words = first_clause_min_words
        self.max_chars = max_chars

    def push(self, delta: str) -> list[str]:
        """Add text; return the pieces that are now complete."""
        self._buffer += delta
        pieces: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
            if piece:
                pieces.append(piece)
                self._emitted += 1
        return pieces

    def flush(self) -> list[str]:
        """The rest of the text, at the end of the stream."""
        rest, self._buffer = self._buffer.strip(), ""
        if rest:
            self._emitted += 1
            return [rest]
        return []

    def _find_cut(self) -> int | None:
        text = self._buffer
        for match in _SENTENCE_END.finditer(text):
            end = match.end()
            if match.group().startswith(".") and _is_abbreviation(text, match.start() + 1):
                continue
            if text[:end].strip():
                return end
        if self._emitted == 0:
            for match in _CLAUSE_END.finditer(text):
                if len(text[:match.end()].split()) >= self.first_clause_min_words:
                    return match.end()
        if len(text) > self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None


def split_sentences(text: str) -> list[str]:
    """All sentences of a whole text (no clause cut for the first one)."""
    splitter = SentenceSplitter(first_clause_min_words=10**9)
    return splitter.push(text + " ") + splitter.flush()
