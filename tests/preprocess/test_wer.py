"""Word error rate against the gold text, and words attributed to the wrong clip
(meldflow.preprocess.wer)."""
import pytest

from meldflow.preprocess.wer import normalise_for_wer, word_error_rate, words_moved


def test_text_is_compared_without_case_or_punctuation():
    assert normalise_for_wer("It\u2019s OK... 'Sup, Joey?") == "it's ok sup joey"
    assert word_error_rate("It's OK.", "it's ok") == 0.0
    assert word_error_rate("one two three four", "one two four") == pytest.approx(0.25)
    assert word_error_rate("", "anything") is None  # no gold: no WER
    assert word_error_rate("hi there", "") == 1.0


def test_a_word_in_the_wrong_clip_is_moved_a_misheard_one_is_not():
    gold = ["Are you sure? No?", "'Sup? 'Sup dude?"]
    assert words_moved(gold, ["Are you sure?", "No? 'Sup? 'Sup dude?"]) == [("no", 0, 1)]
    assert words_moved(gold, ["Are you sure? Know?", "'Sup? 'Sup dude?"]) == []
    assert words_moved(gold, gold) == []
