"""Fixed phrases the orchestrator speaks itself, per language (BCP-47 primary tag)."""

from __future__ import annotations

PLEASE_REPEAT = {
    "en": "Sorry, I didn't catch that. Please say that again.",
    "hi": "माफ़ कीजिए, मैं समझ नहीं पाया। कृपया फिर से कहिए।",
    "hi-Latn": "Maaf kijiye, main samajh nahi paaya. Kripya phir se kahiye.",
}
APOLOGY = {
    "en": "Sorry, I can't answer right now. Please try again in a moment.",
    "hi": "माफ़ कीजिए, मैं अभी जवाब नहीं दे सकता। कृपया थोड़ी देर बाद फिर कोशिश कीजिए।",
    "hi-Latn": "Maaf kijiye, main abhi jawab nahi de sakta. Thodi der baad phir koshish kijiye.",
}


def phrase(table: dict[str, str], language: str) -> str:
    if language in table:
        return table[language]
    return table.get(language.split("-")[0].lower(), table["en"])
