"""What the model is asked: the spoken-answer system prompt, the answer's language, and
the history cut to a token budget.

The system prompt is short on purpose: on a CPU, prompt processing is most of the wait
for the first token, and the prompt's unchanging start is what the local model keeps
cached between requests (the language rule comes last so the rest stays shared).
"""

from __future__ import annotations

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

def system_prompt(language: str, style: str = SPOKEN_STYLE) -> str:
    rule = _LANGUAGE_RULES.get(language)
    if rule is None:
        name = _LANGUAGE_NAMES.get(language)
        rule = f"Reply in {name}." if name else f"Reply in the language with code '{language}'."
    return f"{style} {rule}"


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
