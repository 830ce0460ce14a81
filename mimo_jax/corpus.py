"""Build a small espeak-ng speech corpus with transcripts (`mimo_jax.data.corpus`):

  python -m mimo_jax.corpus --output=DIR --num_utterances=N [--seed=0] [--languages=en,zh] \
      [--sentences=FILE] [--speakers=a,b]

Writes DIR/manifest.jsonl and DIR/wavs/. Exit status: 0 done, 1 unusable input (the message
names it).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from mimo_jax.data.corpus import SENTENCES, VOICES, CorpusError, build_corpus
from mimo_jax.data.progress import Progress


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  flags.DEFINE_string("output", None, "Folder for manifest.jsonl and wavs/.", required=True)
  flags.DEFINE_integer("num_utterances", 64, "Number of utterances to synthesise.")
  flags.DEFINE_integer("seed", 0, "Seed of the sentence, language and voice choices.")
  flags.DEFINE_list("languages", ["en", "zh"], "Languages to draw from.")
  flags.DEFINE_string("sentences", SENTENCES, "Sentence list: `language<TAB>sentence` lines.")
  flags.DEFINE_list("speakers", [], f"Voices to use (default all): {[v.speaker for v in VOICES]}")


def run(output: str, num_utterances: int, seed: int, languages: tuple[str, ...],
        sentences: str = SENTENCES, speakers: tuple[str, ...] = ()) -> int:
  """Builds the corpus and prints a summary; returns the exit status."""
  try:
    manifest = build_corpus(output, num_utterances, seed, languages, sentences_path=sentences,
                            speakers=speakers, progress=Progress(num_utterances))
  except (CorpusError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  with open(manifest, encoding="utf-8") as f:
    hours = sum(json.loads(line)["duration"] for line in f) / 3600
  print(f"{manifest}: {num_utterances} utterances, {hours * 60:.1f} min of audio")
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  sys.exit(run(f.output, f.num_utterances, f.seed, tuple(f.languages), f.sentences,
               tuple(f.speakers)))


def console() -> None:
  """`python -m mimo_jax.corpus` and the `mimo-corpus` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
