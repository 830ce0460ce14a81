"""English sentences made from a small grammar written for this project (CC0), for corpora with
real held-out data: thousands of distinct sentences over a vocabulary of a few hundred words, so
a model trained on some sentences meets only new combinations of known words in the others.

  sentences(3000, seed=0)   # distinct sentences, the same list for the same arguments

Each sentence is one of a few clause shapes (who did what to what, where and when), filled from
the word lists below; the lists are plain, common words that espeak-ng pronounces well.
"""

from __future__ import annotations

import numpy as np

NAMES = ("Anna", "Peter", "Maria", "David", "Laura", "James", "Sarah", "Thomas", "Emma", "Daniel",
         "Julia", "Robert", "Helen", "Martin", "Alice", "George")
PEOPLE = ("farmer", "teacher", "doctor", "baker", "sailor", "painter", "driver", "student",
          "neighbour", "gardener", "nurse", "singer", "captain", "writer")
KINDS = ("old", "young", "quiet", "happy", "tired", "careful", "clever", "brave", "busy",
         "friendly")
LOOKS = ("small", "large", "heavy", "new", "old", "red", "green", "blue", "yellow", "bright",
         "warm", "cold")
THINGS = ("box", "letter", "basket", "lamp", "chair", "window", "door", "book", "bottle", "coat",
          "ladder", "kettle", "garden", "bicycle", "boat", "map", "blanket", "table", "clock",
          "bucket", "candle", "radio", "picture", "key")
VERBS = ("opened", "closed", "painted", "carried", "found", "cleaned", "fixed", "moved",
         "washed", "sold", "bought", "lifted", "dropped", "watched", "checked", "covered")
PLACES = ("kitchen", "station", "market", "harbour", "village", "forest", "library", "bridge",
          "river", "school", "office", "garage", "hill", "field", "shop", "church")
PREPOSITIONS = ("near", "behind", "inside", "beside", "outside", "across", "under", "above")
TIMES = ("this morning", "last night", "on Monday", "after lunch", "before dinner",
         "in the evening", "yesterday", "at noon", "every day", "on Sunday", "at dawn",
         "in the spring")
GOES = ("walked", "drove", "ran", "hurried", "returned", "rode", "sailed", "climbed")
FEELINGS = ("glad", "sure", "surprised", "worried", "sorry", "certain")


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
  return words[int(rng.integers(len(words)))]


def _subject(rng: np.random.Generator) -> str:
  if rng.random() < 0.5:
    return _pick(rng, NAMES)
  return f"the {_pick(rng, KINDS)} {_pick(rng, PEOPLE)}"


def _sentence(rng: np.random.Generator) -> str:
  """One sentence of a randomly chosen shape."""
  shape = int(rng.integers(5))
  subject = _subject(rng)
  thing = f"the {_pick(rng, LOOKS)} {_pick(rng, THINGS)}"
  place = f"{_pick(rng, PREPOSITIONS)} the {_pick(rng, PLACES)}"
  time = _pick(rng, TIMES)
  if shape == 0:
    text = f"{subject} {_pick(rng, VERBS)} {thing} {place}"
  elif shape == 1:
    text = f"{time} {subject} {_pick(rng, VERBS)} {thing}"
  elif shape == 2:
    text = f"{subject} {_pick(rng, GOES)} to the {_pick(rng, PLACES)} {time}"
  elif shape == 3:
    text = f"{subject} was {_pick(rng, FEELINGS)} that {_subject(rng)} {_pick(rng, VERBS)} {thing}"
  else:
    text = f"{subject} left {thing} {place} {time}"
  return text[0].upper() + text[1:] + "."


def sentences(n: int, seed: int = 0) -> list[str]:
  """`n` distinct sentences, drawn from `np.random.default_rng(seed)` in a fixed order."""
  if n < 1:
    raise ValueError(f"sentences: n must be >= 1, got {n}")
  rng = np.random.default_rng(seed)
  found: dict[str, None] = {}
  for _ in range(100 * n):  # far more draws than needed: the grammar has millions of sentences
    found.setdefault(_sentence(rng))
    if len(found) == n:
      return list(found)
  raise ValueError(f"sentences: the grammar gave only {len(found)} distinct sentences for {n}")
