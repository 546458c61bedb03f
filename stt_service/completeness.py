"""Does an utterance read as finished? The words decide how long a pause ends it.

"What's the capital of France" ends after a short silence; "I would like to book a table
for" is someone thinking of the number, so the recognizer waits longer before it declares
the end of the utterance (streaming.py). The rule looks at the last word of the live
transcript: a preposition, article, conjunction, possessive, auxiliary or filler does not
end a sentence (English, and Hindi's postpositions and conjunctions); neither does a
trailing comma, dash or ellipsis. Whisper adds a full stop to almost anything, so a full
stop says nothing; a question mark ends it ("What are you looking for?"). Words that often
end a sentence too ("on", "so", "it", "do", "please") are not in the list: a wrong "finished"
costs a cut-off, a wrong "unfinished" only the longer wait.

Chosen by measurement on this machine, where a turn-taking model would cost CPU at the very
moment the final is decoded: the rule costs microseconds. (Turn-taking models in PyPI
packages were not usable here: one loads its weights from a model hub at run time, another's
model licence allows it only inside its own framework.)
"""

from __future__ import annotations

import re

PREPOSITIONS = frozenset("""
    to for of with without from by about at into onto towards toward between through during like than as per via
""".split())
UNFINISHED_ENDINGS = PREPOSITIONS | frozenset("""
    a an the my your our their
    and or but nor because if unless until while although though whether whose
    i'm let's
    um uh er erm
    और या लेकिन कि के की का को में से पर लिए अगर जब क्योंकि मेरा मेरी
""".split())
# Whisper fills the silence after a trailing preposition with "it": "Set a timer for" is heard
# as "Set a timer for it" (tiny.en, espeak-ng speech: 2 of 3 trailing prepositions; the third got "...").
FILLED_IN = frozenset({"it"})
_TRAILING_OFF = re.compile(r"(,|-|–|—|\.\.\.|…)\s*$")
_WORD = re.compile(r"[^\s.,!?;:\"“”‘’()\[\]…।॥]+")


def unfinished(text: str) -> bool:
    """True when `text` trails off ("… a table for", "and um,"): more is likely to come."""
    text = text.strip()
    if not text or _TRAILING_OFF.search(text):
        return bool(text)
    if text[-1] in "?!":
        return False
    words = [w.strip("'-") for w in _WORD.findall(text.lower())]
    if len(words) >= 2 and words[-1] in FILLED_IN and words[-2] in PREPOSITIONS:
        return True
    return bool(words) and words[-1] in UNFINISHED_ENDINGS
