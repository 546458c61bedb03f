"""Cutting text into sentences (voicebus/text.py): what TTS speaks piece by piece and what
the LLM's run-on guard counts."""

import pytest

from voicebus.text import SentenceSplitter, split_sentences


@pytest.mark.parametrize("text, sentences", [
    ("It was built in 1492. Then it fell.", ["It was built in 1492.", "Then it fell."]),
    ("It was founded by Augustus I. It grew.", ["It was founded by Augustus I.", "It grew."]),
    ("1. Boil water. 2. Add tea.", ["1. Boil water.", "2. Add tea."]),
    ("Dr. Smith met J. K. Rowling. Pi is 3.14 today.", ["Dr. Smith met J. K. Rowling.", "Pi is 3.14 today."]),
    ("भारत की राजधानी नई दिल्ली है। यह बड़ा शहर है।", ["भारत की राजधानी नई दिल्ली है।", "यह बड़ा शहर है।"]),
])
def test_sentences_end_where_a_reader_would_stop(text, sentences):
    assert split_sentences(text) == sentences


def test_the_first_piece_may_end_at_a_clause_for_a_quick_first_audio():
    splitter = SentenceSplitter()
    assert splitter.push("If you want some music, I can") == ["If you want some music,"]
    assert splitter.push(" play a song. And") == ["I can play a song."]
    assert splitter.flush() == ["And"]
