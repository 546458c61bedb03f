"""Which language a user's words are in, and so the language of the answer and its voice.

A transcript's language code comes from Whisper, which labels romanised Hindi ("aap kaise
ho?") as English because of its letters; a typed turn has none. The words decide: the
orchestrator tags the turn with it (and picks its voice), the LLM service writes the reply's
language rule from it, so both agree.
"""

from __future__ import annotations

import re

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
    ek sunao sunaiye dikhao kijiye dijiye bataye chalo kab kyu kaun kon ghar naam kaam raat subah shaam
    rajdhani desh shahar sheher duniya kahani gaana sawal jawab waqt samay khush pyaar dil
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


def voice_language(language: str) -> str:
    """The language whose voice speaks an answer in `language` (a primary subtag for TTS).

    Romanised Hindi is spoken by the English voice: espeak-ng's Hindi voice reads Latin
    letters with its English rules anyway (`espeak-ng -v hi -x "aap kaise ho"` switches to
    (en)), and Piper's English voice says them better.
    """
    if language == "hi-Latn":
        return "en"
    return language.split("-")[0].lower() or "en"
