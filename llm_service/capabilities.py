"""What Voicebus cannot do, said honestly: it can only talk.

Asked "Set a timer for ten minutes." or "Call my sister.", the small local models answer
"Sure, I'll set a timer for ten minutes." (Qwen2.5-Coder 0.5B: 7 of 10 such requests in
bench/quality.py, 1.5B: 10 of 10), a promise nothing keeps, whatever the system prompt says.
A request for an action is recognised here by its words — a command or a "can you …" for a
call, a message, a timer, alarm or reminder, music, a device, an order or a booking — and
answered with a fixed sentence in the user's language, without asking the model. A question
about such things ("How do I set a timer on my phone?") is not a request and goes to the model.
"""

from __future__ import annotations

import re

_ASK = r"^\s*(?:(?:ok(?:ay)?|hey|hi|so|now|and|please|voicebus)[\s,]+)*(?:(?:can|could|would|will) you\s+(?:please\s+)?|please\s+)?"
_ACTIONS = [
    ("calls", r"(?:call|phone|ring|dial|video call|facetime)\s+(?!it\b|that\b|this\b|me\b)\w+"),
    ("messages", r"(?:text|message|email|e-mail|whatsapp|sms)\s+\w+|send\s+(?:a|an|my|the)?\s*(?:\w+\s+)?"
                 r"(?:text|message|email|e-mail|sms|reply)\b"),
    ("timers", r"(?:set|start|create|make)\s+(?:a|an|my|the)?\s*(?:\w+\s+)?(?:timer|alarm|reminder|countdown)\b"
               r"|remind\s+me\b|wake\s+me\s+up\b"),
    ("music", r"play\s+(?:me\s+)?(?:some|a|the|my)?\s*(?:\w+\s+){0,3}?(?:music|song|songs|playlist|album|radio|"
              r"podcast|track)\b|(?:pause|stop|skip)\s+(?:the\s+)?(?:music|song|track)\b"),
    ("devices", r"(?:turn|switch)\s+(?:on|off)\b|(?:turn|switch)\s+(?:the\s+|my\s+)?\w+(?:\s+\w+)?\s+(?:on|off)\b|"
                r"(?:open|close|lock|unlock)\s+(?:the|my)\s+(?:\w+\s+)?(?:door|window|garage|gate|blinds|curtains)\b|"
                r"(?:dim|brighten)\s+(?:the\s+)?lights?\b|(?:set|turn)\s+(?:the\s+)?(?:heating|thermostat|ac|"
                r"temperature)\b"),
    ("orders", r"(?:order|buy|purchase|get)\s+(?:me\s+)?(?:a|an|some|two|three|four)\s+\w+|(?:book|reserve)\s+(?:me\s+)?"
               r"(?:a|an|the|my)\s+(?:\w+\s+)?(?:table|taxi|cab|flight|ticket|tickets|hotel|room|appointment|train|"
               r"ride|uber|seat)\b|add\s+.+\s+to\s+my\s+(?:\w+\s+)?(?:list|cart|basket|calendar)\b"),
]
_REQUEST = [(kind, re.compile(f"{_ASK}(?:{pattern})", re.I)) for kind, pattern in _ACTIONS]
# Hindi, Devanagari and romanised: the verb forms of a request for the same things.
_HINDI_REQUEST = [
    ("calls", re.compile(r"(?:फ़ोन|फोन|कॉल)\s+(?:करो|कीजिए|कीजिये|लगाओ|लगाइए)|\b(?:phone|call)\s+(?:karo|kijiye|lagao|lagaiye)\b",
                         re.I)),
    ("timers", re.compile(r"(?:टाइमर|अलार्म|रिमाइंडर)\s+(?:लगाओ|लगाइए|सेट)|\b(?:timer|alarm|reminder)\s+(?:lagao|lagaiye|set)\b",
                          re.I)),
    ("music", re.compile(r"(?:गाना|गाने|संगीत|म्यूज़िक|म्यूजिक)\s+(?:बजाओ|बजाइए|चलाओ|लगाओ)|"
                         r"\b(?:gaana|gana|gaane|music|song)\s+(?:bajao|bajaiye|chalao|lagao)\b", re.I)),
    ("devices", re.compile(r"(?:लाइट|बत्ती|पंखा|टीवी)\s+(?:जलाओ|बुझाओ|चालू|बंद)|"
                           r"\b(?:light|batti|pankha|fan|tv)\s+(?:jalao|bujhao|chalu|band)\s*(?:karo|kijiye)?\b", re.I)),
]
_CANNOT = {
    "en": "Sorry, I can't {what}: I can only talk with you. Is there something I can tell you instead?",
    "hi": "माफ़ कीजिए, मैं {what} नहीं कर सकता, मैं सिर्फ़ आपसे बात कर सकता हूँ।",
    "hi-Latn": "Maaf kijiye, main {what} nahi kar sakta, main sirf aapse baat kar sakta hoon.",
}
_WHAT = {
    "en": {"calls": "make calls", "messages": "send messages", "timers": "set timers, alarms or reminders",
           "music": "play music", "devices": "control devices", "orders": "order, book or buy things"},
    "hi": {"calls": "फ़ोन", "messages": "मैसेज", "timers": "टाइमर या अलार्म सेट", "music": "गाना चालू",
           "devices": "डिवाइस कंट्रोल", "orders": "ऑर्डर या बुकिंग"},
    "hi-Latn": {"calls": "phone call", "messages": "message", "timers": "timer ya alarm set", "music": "gaana chalu",
                "devices": "device control", "orders": "order ya booking"},
}


def unsupported_request(text: str) -> str | None:
    """The kind of action asked for ("calls", "timers", ...) when `text` asks for one; else None."""
    for kind, pattern in [*_REQUEST, *_HINDI_REQUEST]:
        if pattern.search(text):
            return kind
    return None


def cannot_do(kind: str, language: str) -> str:
    """The honest answer to a request for an action of `kind`, in the answer's language."""
    key = language if language in _CANNOT else "en"
    return _CANNOT[key].format(what=_WHAT[key][kind])
