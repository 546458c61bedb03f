"""Whether a spoken turn's transcript is worth answering, or the user is asked to say it again.

Whisper always writes something: reversed (unintelligible) speech comes out as "See you
later!" or "Thank you very much for watching." with a confidence (exp of the mean token
log-probability) that is low but not far below clean speech, and a higher no-speech
probability. Measured with tiny.en on espeak-ng speech, 3 voices each, 35 sentences, clean
and reversed (the measurement is in the issue-15 note):

| rule                                                   | clean rejected | reversed rejected |
|--------------------------------------------------------|----------------|-------------------|
| confidence < 0.25 (before)                             | 0 / 102        | 19 / 105          |
| confidence < 0.40                                      | 4 / 102        | 92 / 105          |
| below, for three words or more (one-word "Sure." 0.32) | 0 / 102        | 98 / 105          |

A short reply is judged by the floor alone: "Sure." and "Yes, please" are heard with less
confidence than sentences. The sentence rule is measured for English only; other languages
(the multilingual model, less sure of itself) keep the floor.
"""

from __future__ import annotations

SENTENCE_WORDS = 3  # from this many words on, a transcript is judged as a sentence
MIN_SENTENCE_CONFIDENCE = 0.40
DOUBTFUL_CONFIDENCE, DOUBTFUL_NO_SPEECH = 0.50, 0.30  # a sentence this unsure and this silent-like


def unintelligible(text: str, language: str, confidence: float, no_speech_probability: float,
                   min_confidence: float) -> bool:
    """True when the words are too unsure to answer (`min_confidence` is the floor for any length)."""
    if confidence < min_confidence:
        return True
    if len(text.split()) < SENTENCE_WORDS or not language.lower().startswith("en"):
        return False
    return confidence < MIN_SENTENCE_CONFIDENCE or (
        confidence < DOUBTFUL_CONFIDENCE and no_speech_probability >= DOUBTFUL_NO_SPEECH)
