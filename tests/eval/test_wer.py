"""MiMo-Audio-Eval's normaliser and error rates on cases counted by hand."""

import math

import pytest

from mimo_jax.eval import wer


@pytest.mark.parametrize("text, expected", [
    ("Don't STOP, it's fine!", "don't stop it's fine"),  # the ASCII apostrophe survives
    ("A well-known  (old) \"quote\"...", "a wellknown old quote"),  # deleted, not spaced out
    ("don\u2019t", "dont"),  # a typographic apostrophe is punctuation like any other
    ("  tabs\tand\nnewlines  ", "tabs and newlines"),
    ("你好，世界。", "你 好 世 界"),  # Chinese punctuation, one unit per character
    ("我爱 Python！", "我 爱 P y t h o n"),  # Chinese text: split, never lower-cased
    ("《三体》、“科幻”", "三 体 科 幻"),
    ("?!...", ""),
])
def test_normalize(text, expected):
  assert wer.normalize(text) == expected


def test_language_can_be_forced():
  assert wer.normalize("AB c", "zh") == "A B c"
  assert wer.normalize("你好 World", "en") == "你好 world"


def test_asr_hypothesis_is_cut_at_its_first_bracket():
  assert wer.cut_asr_hypothesis("the cat sat (English) (noise)") == "the cat sat "
  assert wer.cut_asr_hypothesis("no brackets") == "no brackets"
  assert wer.error_rate("The cat sat.", wer.cut_asr_hypothesis("the cat sat (laughs)")
                        )["error_rate"] == 0.0


def test_english_word_errors():
  # the cat sat on the mat / the cat sit on mat: one substitution (sat->sit), one deletion (the).
  row = wer.error_rate("The cat sat on the mat.", "the cat SIT on mat")
  assert (row["substitutions"], row["deletions"], row["insertions"]) == (1, 1, 0)
  assert row["ref_units"] == 6 and row["unit"] == "word"
  assert row["error_rate"] == pytest.approx(2 / 6)
  # Four insertions over two reference words: a rate above 1 is possible and kept.
  assert wer.error_rate("a b", "a b c d e f")["error_rate"] == 2.0
  assert wer.error_rate("It's here", "its here")["error_rate"] == 0.5


def test_chinese_character_errors():
  row = wer.error_rate("今天天气很好。", "今天天汽很好")
  assert row["unit"] == "char" and row["ref_units"] == 6 and row["substitutions"] == 1
  assert row["error_rate"] == pytest.approx(1 / 6)
  assert wer.error_rate("你好", "你好世界")["error_rate"] == 1.0  # two inserted characters


def test_empty_reference_and_hypothesis():
  with pytest.raises(wer.EmptyReference):
    wer.error_rate(" ... ", "anything")
  row = wer.error_rate("one two three", " ?! ")  # nothing left: all deletions
  assert row["deletions"] == 3 and row["error_rate"] == 1.0


def test_macro_mean_and_corpus_rate_differ_on_unequal_lengths():
  short = wer.error_rate("yes", "no")  # 1 error / 1 word
  long = wer.error_rate("one two three four five six seven eight nine",
                        "one two three four five six seven eight nine")  # 0 / 9
  summary = wer.summarize([short, long])
  assert summary["macro"] == pytest.approx(0.5)
  assert summary["corpus"] == pytest.approx(0.1)
  assert summary["n"] == 2 and summary["unit"] == "word"
  empty = wer.summarize([])
  assert math.isnan(empty["macro"]) and math.isnan(empty["corpus"]) and empty["n"] == 0
