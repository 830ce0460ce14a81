"""Few-shot prompts in MiMo-Audio-Eval's Base-model format, as data a backend renders.

A prompt is a list of `Part`s: text, an input audio span, or an example output stream (its
transcript and audio). MiMo-Audio-Eval (`get_few_shot_prompts`) starts a prompt that mixes text
and speech with `[Int]:` and an all-speech prompt with `<Spe>:`; a prompt whose answer is speech
ends with `<|sostm|>` (the backend adds it). Audio is named by path, so a prompt stays small,
serialisable, and readable by a stand-in model in the tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

TEXT, AUDIO, STREAM = "text", "audio", "stream"


@dataclasses.dataclass(frozen=True)
class Part:
  """kind TEXT: `text`; AUDIO: the speech at `audio` (a path); STREAM: `text` spoken in `audio`."""

  kind: str
  text: str = ""
  audio: str = ""

  def __post_init__(self):
    if self.kind not in (TEXT, AUDIO, STREAM):
      raise ValueError(f"Part.kind must be {TEXT!r}, {AUDIO!r} or {STREAM!r}, got {self.kind!r}")


def prefix(parts: Sequence[Part]) -> str:
  """`[Int]:` when the prompt's parts mix text and speech, `<Spe>:` when all are speech, else
  nothing (the answer's modality does not count, as in the reference)."""
  kinds = {TEXT if p.kind == TEXT else "speech" for p in parts}
  if kinds == {"speech"}:
    return "<Spe>:"
  return "[Int]:" if len(kinds) == 2 else ""
