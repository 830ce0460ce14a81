"""A small synthetic speech corpus spoken by espeak-ng, for the demo and the tests.

  python -m mimo_jax.corpus --output=DIR --num_utterances=N [--seed=0] [--languages=en,zh]

Writes DIR/manifest.jsonl (the manifest format of `mimo_jax.data.manifest`, audio paths relative
to DIR) and DIR/wavs/<utt>.wav (mono 16-bit PCM at 24 kHz, the codec's rate). Utterance i speaks
a sentence of the bundled list (`sentences.txt`, written for this project, CC0) in one of several
espeak-ng voices of its language; the choices come from one seeded generator, so the same seed
gives the same manifest and the same audio bytes. espeak-ng is fast (tens of ms a sentence), so
a corpus of a hundred utterances takes seconds.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import numpy as np
import soundfile

from mimo_jax.codec.resample import resample
from mimo_jax.data.progress import Progress

SENTENCES = os.path.join(os.path.dirname(__file__), "sentences.txt")
SAMPLE_RATE = 24000
MANIFEST = "manifest.jsonl"


class CorpusError(RuntimeError):
  """espeak-ng is missing or failed, or the sentence list is unusable; the message says which."""


@dataclasses.dataclass(frozen=True)
class Voice:
  """One synthetic speaker: an espeak-ng voice (+variant), speaking rate (words/min), pitch."""

  speaker: str
  language: str
  espeak_voice: str
  speed: int
  pitch: int


# Several speakers per language: different accents, variants (male/female timbres), rates and
# pitches, so speaker-dependent tasks (voice continuation, TTS prompts) have something to tell.
VOICES = (
    Voice("en_us_m3", "en", "en-us+m3", 165, 45),
    Voice("en_us_f3", "en", "en-us+f3", 175, 60),
    Voice("en_gb_m1", "en", "en-gb+m1", 155, 40),
    Voice("en_gb_f2", "en", "en-gb-x-rp+f2", 170, 55),
    Voice("en_sc_m5", "en", "en-gb-scotland+m5", 150, 35),
    Voice("en_us_m1", "en", "en-us+m1", 160, 50),
    Voice("en_us_f2", "en", "en-us+f2", 165, 65),
    Voice("en_ca_m4", "en", "en-029+m4", 150, 40),
    Voice("en_la_f4", "en", "en-gb-x-gbclan+f4", 160, 58),
    Voice("en_ny_m6", "en", "en-us-nyc+m6", 170, 45),
    Voice("en_wm_m2", "en", "en-gb-x-gbcwmd+m2", 155, 38),
    Voice("en_us_f5", "en", "en-us+f5", 160, 62),
    Voice("zh_m2", "zh", "cmn+m2", 160, 45),
    Voice("zh_f4", "zh", "cmn+f4", 170, 60),
)


def load_sentences(path: str = SENTENCES) -> list[tuple[str, str]]:
  """(language, sentence) pairs of a sentence list: `lang<TAB>sentence` lines, `#` comments."""
  sentences = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      language, sep, text = line.partition("\t")
      if not sep or not text.strip():
        raise CorpusError(f"{path}:{n}: expected 'language<TAB>sentence', got {line!r}")
      sentences.append((language, text.strip()))
  return sentences


def synthesize(text: str, voice: Voice, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """float32 mono samples [n] of espeak-ng speaking `text`, resampled to `sample_rate`."""
  binary = shutil.which("espeak-ng")
  if binary is None:
    raise CorpusError("espeak-ng is not installed (apt-get install espeak-ng)")
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "out.wav")
    # Text goes in on stdin, so a sentence starting with '-' is never read as an option.
    result = subprocess.run([binary, "-v", voice.espeak_voice, "-s", str(voice.speed), "-p",
                             str(voice.pitch), "-w", path, "--stdin"], input=text.encode(),
                            capture_output=True, check=False)
    if result.returncode != 0 or not os.path.isfile(path):
      raise CorpusError(f"espeak-ng failed for voice {voice.espeak_voice} on {text!r}: "
                        f"{result.stderr.decode(errors='replace').strip()}")
    wav_n, sr = soundfile.read(path, dtype="float32")
  if len(wav_n) == 0:
    raise CorpusError(f"espeak-ng produced no audio for voice {voice.espeak_voice} on {text!r}")
  return resample(wav_n, sr, sample_rate)


def build_corpus(output: str, num_utterances: int, seed: int = 0,
                 languages: Sequence[str] = ("en", "zh"), sample_rate: int = SAMPLE_RATE,
                 sentences_path: str = SENTENCES, speakers: Sequence[str] = (),
                 progress: Progress | None = None) -> str:
  """Synthesises `num_utterances` utterances into `output`; returns the manifest's path.

  Utterance i: a language drawn uniformly from `languages`, then a sentence and a voice of that
  language, all from `np.random.default_rng(seed)`. `speakers` limits the voices to those
  named (e.g. to hold some out; default: all); `progress` is told of each utterance made. Each
  manifest line holds `audio` ("wavs/utt_00000.wav"), `text`, `speaker`, `language` and
  `duration` (seconds).
  """
  if num_utterances < 1:
    raise CorpusError(f"num_utterances must be >= 1, got {num_utterances}")
  unknown = set(speakers) - {v.speaker for v in VOICES}
  if unknown:
    raise CorpusError(f"unknown speakers {sorted(unknown)}; known: "
                      f"{[v.speaker for v in VOICES]}")
  sentences = load_sentences(sentences_path)
  by_language = {lang: [s for l, s in sentences if l == lang] for lang in languages}
  voices = {lang: [v for v in VOICES if v.language == lang and (
      not speakers or v.speaker in speakers)] for lang in languages}
  for lang in languages:
    if not by_language[lang] or not voices[lang]:
      raise CorpusError(f"language {lang!r}: {len(by_language[lang])} sentences in "
                        f"{sentences_path}, {len(voices[lang])} voices; need both")
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(output, "wavs"), exist_ok=True)
  chosen = []  # drawn in order first, so the corpus does not depend on the threads' timing
  for i in range(num_utterances):
    lang = languages[rng.integers(len(languages))]
    text = by_language[lang][rng.integers(len(by_language[lang]))]
    voice = voices[lang][rng.integers(len(voices[lang]))]
    chosen.append((f"wavs/utt_{i:05d}.wav", text, voice))

  def speak(audio: str, text: str, voice: Voice) -> dict:
    wav_n = synthesize(text, voice, sample_rate)
    soundfile.write(os.path.join(output, audio), wav_n, sample_rate, subtype="PCM_16")
    return {"audio": audio, "text": text, "speaker": voice.speaker, "language": voice.language,
            "duration": round(len(wav_n) / sample_rate, 4)}

  # Each espeak-ng call is its own process: one thread per core keeps every core speaking.
  lines = []
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    for line in pool.map(speak, *zip(*chosen)):
      lines.append(line)
      if progress is not None:
        progress.update(1, line["duration"])
  manifest = os.path.join(output, MANIFEST)
  # Written last and atomically: a manifest on disk always lists only finished wav files.
  with open(manifest + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
  os.replace(manifest + ".tmp", manifest)
  return manifest
