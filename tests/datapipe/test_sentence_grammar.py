"""The sentence grammar of the learn recipe: distinct, reproducible sentences whose held-out part
is made of words the rest already uses."""

import pytest

from mimo_jax.data import sentence_grammar


def test_sentences_are_distinct_and_reproducible():
  first = sentence_grammar.sentences(500, seed=3)
  assert len(set(first)) == 500
  assert first == sentence_grammar.sentences(500, seed=3)
  assert first != sentence_grammar.sentences(500, seed=4)
  assert all(s[0].isupper() and s.endswith(".") for s in first)


def test_held_out_sentences_reuse_the_trained_words():
  """The learn recipe holds out the first 100 of 3000: new sentences, known words."""
  sentences = sentence_grammar.sentences(3000)
  words = lambda group: {w.strip(".").lower() for s in group for w in s.split()}
  held_out, trained = sentences[:100], sentences[100:]
  assert not set(held_out) & set(trained)
  assert words(held_out) <= words(trained)


def test_bad_count():
  with pytest.raises(ValueError, match="n must be >= 1"):
    sentence_grammar.sentences(0)
