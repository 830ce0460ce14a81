"""Word / character error rates scored the way MiMo-Audio-Eval scores them (spec §6.3).

  normalize("Hello, World!")            -> "hello world"
  normalize("你好，世界。")               -> "你 好 世 界"
  error_rate("the cat", "a cat")        -> {"error_rate": 0.5, "unit": "word", ...}
  summarize(rows)                       -> {"macro": ..., "corpus": ..., "n": ...}

Normalisation (MiMo-Audio-Eval's ASR/TTS evaluators): every punctuation character is deleted
except the ASCII apostrophe (ASCII punctuation, which includes symbols such as `$` and `~`, and
every Unicode punctuation character, the set `zhon.hanzi.punctuation` spells out for Chinese),
whitespace runs collapse to one space. Chinese text is then scored per character (CER), English
text is lower-cased and scored per word (WER). Deleting rather than spacing out punctuation is the
reference's choice: "well-known" becomes "wellknown".

The headline figure is the macro mean (each utterance's rate averaged over utterances, what the
report publishes); the corpus figure (all errors over all reference units) is reported beside it,
labelled as such: the two differ when utterance lengths differ.
"""

from __future__ import annotations

import math
import string
import unicodedata
from collections.abc import Sequence

import jiwer

KEEP = "'"
_ASCII_PUNCTUATION = frozenset(string.punctuation) - {KEEP}


class EmptyReference(ValueError):
  """A reference with nothing left to score after normalisation."""


def is_chinese(text: str) -> bool:
  """MiMo-Audio's language test: any CJK unified ideograph."""
  return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _is_punctuation(ch: str) -> bool:
  return ch != KEEP and (ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P"))


def normalize(text: str, language: str | None = None) -> str:
  """The scoring form of a transcript. language: "zh", "en" or None (Chinese if `is_chinese`)."""
  kept = "".join(ch for ch in text if not _is_punctuation(ch))
  if (language or ("zh" if is_chinese(text) else "en")) == "zh":
    return " ".join(ch for ch in kept if not ch.isspace())
  return " ".join(kept.lower().split())


def cut_asr_hypothesis(text: str) -> str:
  """An ASR answer up to its first `(`: models append bracketed notes (language tags,
  "(inaudible)") that the reference never has."""
  return text.split("(", 1)[0]


def error_rate(reference: str, hypothesis: str, language: str | None = None) -> dict:
  """One utterance's edit counts and rate after `normalize`. Raises EmptyReference."""
  language = language or ("zh" if is_chinese(reference) else "en")
  ref, hyp = normalize(reference, language), normalize(hypothesis, language)
  if not ref:
    raise EmptyReference(f"reference {reference!r} is empty after normalisation")
  n_ref = len(ref.split())
  if hyp:
    out = jiwer.process_words(ref, hyp)
    counts = dict(substitutions=out.substitutions, deletions=out.deletions,
                  insertions=out.insertions)
  else:  # jiwer refuses an empty hypothesis: every reference unit is deleted
    counts = dict(substitutions=0, deletions=n_ref, insertions=0)
  errors = sum(counts.values())
  return {"error_rate": errors / n_ref, "errors": errors, "ref_units": n_ref,
          "unit": "char" if language == "zh" else "word", **counts}


def summarize(rows: Sequence[dict]) -> dict:
  """Macro mean and corpus rate of `error_rate` rows; NaN when there are none."""
  n = len(rows)
  units = sorted({r["unit"] for r in rows})
  total = sum(r["ref_units"] for r in rows)
  return {"macro": sum(r["error_rate"] for r in rows) / n if n else math.nan,
          "corpus": sum(r["errors"] for r in rows) / total if total else math.nan,
          "n": n, "unit": "+".join(units) if units else ""}
