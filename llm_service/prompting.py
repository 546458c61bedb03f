"""What the model is asked: the spoken-answer system prompt, the answer's language, and
the history cut to a token budget.

The system prompt is short on purpose: on a CPU, prompt processing is most of the wait
for the first token, and the prompt's unchanging start is what the local model keeps
cached between requests (the language rule comes last so the rest stays shared).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

SPOKEN_STYLE = (
    "You are Voicebus, a helpful voice assistant. Your reply is read aloud, so answer in one to three "
    "short sentences of plain conversational text, with no markdown, lists, code, emoji or links.")

_LANGUAGE_RULES = {
    "en": "Reply in English.",
    "hi": "Reply in Hindi written in Devanagari script.",
    "hi-Latn": "The user writes Hindi in Latin letters (Hinglish); reply the same way, in romanised Hindi, "
               "never in Devanagari.",
    "": "Reply in the language the user writes in.",
}
_LANGUAGE_NAMES = {
    "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
    "ru": "Russian", "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "ar": "Arabic", "bn": "Bengali",
    "ta": "Tamil", "te": "Telugu", "mr": "Marathi", "gu": "Gujarati", "pa": "Punjabi", "ur": "Urdu",
    "tr": "Turkish", "pl": "Polish", "uk": "Ukrainian", "id": "Indonesian", "vi": "Vietnamese",
}

# Words that are common in romanised Hindi and rare in English. Short ones that are also
# English words ("main", "the", "to", "do") are left out; the weak ones count half.
_HINDI_STRONG = frozenset("""
    hai hain haan nahi nahin nahim kya kyaa kyun kyon kaise kaisa kaisi kahan kahaan kaun kitna kitni kitne
    mujhe mujhko mera meri mere tera teri tere tumhara tumhari aap aapka aapki aapke apna apni apne hum
    humein hamara hamari tum tumhe unka unki uska uski iska iski yeh woh wahan yahan abhi aaj kuch
    bahut bohot bahot accha acha achha theek thik batao bataiye bataao bolo boliye karo kariye karna karta
    karti karte kar raha rahi rahe hoga hogi honge chahiye chahte chahta chahti sakta sakti sakte wala wali
    wale liye matlab samajh samjha samjhao hoon hota hoti hote tha thi gaya gayi mausam paani khana
    kal jaldi dost yaar bhai ji namaste shukriya dhanyavaad kripya zaroor bilkul sabse kyunki lekin
""".split())
_HINDI_WEAK = frozenset("ka ki ke ko se par bhi aur ho hu na main mein".split())
_DEVANAGARI = re.compile(r"[\u0900-\u097F]")
_LATIN_WORD = re.compile(r"[a-z]+")


def romanised_hindi_score(text: str) -> float:
    """Share of the words that look like romanised Hindi (0..1)."""
    words = _LATIN_WORD.findall(text.lower())
    if not words:
        return 0.0
    hits = sum(1.0 if w in _HINDI_STRONG else 0.5 if w in _HINDI_WEAK else 0.0 for w in words)
    # Two strong words are needed at least, so one borrowed word ("namaste") in English stays English.
    strong = sum(1 for w in words if w in _HINDI_STRONG)
    return hits / len(words) if strong >= 2 else 0.0


def answer_language(stt_language: str, user_text: str) -> str:
    """The language to answer in: STT's code, corrected by the text's script and words.

    Whisper labels romanised Hindi as English (it is written in Latin letters), and
    Hindi speech may come out in either script; the text decides between them.
    """
    code = stt_language.strip()
    base = code.split("-")[0].lower()
    if _DEVANAGARI.search(user_text):
        return base if base in ("mr", "ne", "sa") else "hi"  # Marathi, Nepali, Sanskrit share the script
    if base in ("", "en", "hi", "ur") and romanised_hindi_score(user_text) >= 0.25:
        return "hi-Latn"
    if base == "hi":  # Hindi speech written in Latin letters ("hi-Latn" passed in lands here too)
        return "hi-Latn" if _LATIN_WORD.search(user_text.lower()) else "hi"
    return base


def system_prompt(language: str) -> str:
    rule = _LANGUAGE_RULES.get(language)
    if rule is None:
        name = _LANGUAGE_NAMES.get(language)
        rule = f"Reply in {name}." if name else f"Reply in the language with code '{language}'."
    return f"{SPOKEN_STYLE} {rule}"


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


# Role markers and separators a chat template adds around each message.
MESSAGE_OVERHEAD_TOKENS = 4
TokenCounter = Callable[[Sequence[str]], Awaitable[list[int]]]


async def estimate_tokens(texts: Sequence[str]) -> list[int]:
    """About 4 Latin characters per token; other scripts (Devanagari...) about 2 per token."""
    counts = []
    for text in texts:
        ascii_chars = sum(1 for c in text if c < "\x80")
        counts.append(-(-ascii_chars // 4) + -(-(len(text) - ascii_chars) // 2))
    return counts


@dataclass(frozen=True)
class Trimmed:
    messages: list[Message]
    dropped: int
    prompt_tokens: int


async def trim_history(messages: Sequence[Message], budget: int, count: TokenCounter) -> Trimmed:
    """Keep the leading system messages and the newest message always; then as many of the
    most recent earlier messages as fit in `budget` tokens. The oldest go first, and the kept
    history never starts with an assistant message (some chat templates require a user first).
    """
    head = [m for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    newest, history = rest[-1], rest[:-1]
    sizes = [n + MESSAGE_OVERHEAD_TOKENS for n in await count([m.content for m in [*head, newest, *history]])]
    used = sum(sizes[: len(head) + 1])
    history_sizes = sizes[len(head) + 1:]
    keep_from = len(history)
    for index in range(len(history) - 1, -1, -1):
        if used + history_sizes[index] > budget:
            break
        used += history_sizes[index]
        keep_from = index
    while keep_from < len(history) and history[keep_from].role == "assistant":
        used -= history_sizes[keep_from]
        keep_from += 1
    return Trimmed([*head, *history[keep_from:], newest], keep_from, used)
