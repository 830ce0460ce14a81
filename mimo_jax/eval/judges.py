"""Offline judges: real models that ship inside their PyPI wheels, so nothing downloads.

- `SphinxJudge`: pocketsphinx's en-us acoustic model, dictionary and language model transcribe
  speech (16 kHz int16). Open vocabulary (`sentences=None`) uses the bundled trigram LM; on
  espeak-ng voices it gets most words wrong on the ground truth itself, so the closed-set mode
  restricts it to a grammar of the task's own sentences: it then answers which sentence was said,
  which measures intelligibility among known alternatives, not open recognition. Reports say
  which mode was used (`.mode`). Both modes' accuracy on espeak-ng ground truth is measured by
  experiments/bench/judges_calibration.py (results in experiments/results/).
- `speaker_similarity`: cosine of resemblyzer's GE2E voice embeddings (the SIM column).
- `dnsmos`: DNSMOS P.835 (SIG / BAK / OVRL) and P.808 from speechmos's ONNX models.

Models load on first use, once per process (the Sphinx decoder once per judge object).
`JudgeError` names input a judge cannot score (empty, non-finite, no voiced speech).
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Sequence

import jiwer
import librosa
import numpy as np

from mimo_jax.eval import wer

JUDGE_RATE = 16000  # all three models take 16 kHz


class JudgeError(ValueError):
  """Audio a judge cannot score; the message says why."""


def to_judge_rate(wav, sr: int) -> np.ndarray:
  """Mono float32 [samples] at 16 kHz, checked."""
  wav = np.asarray(wav, np.float32)
  if wav.ndim == 2:
    wav = wav.mean(axis=1)
  if wav.ndim != 1 or wav.size == 0:
    raise JudgeError(f"expected non-empty mono audio, got shape {wav.shape}")
  if not np.isfinite(wav).all():
    raise JudgeError("audio has non-finite samples")
  if not isinstance(sr, (int, np.integer)) or sr <= 0:
    raise JudgeError(f"sample rate must be a positive integer, got {sr!r}")
  if sr != JUDGE_RATE:
    wav = librosa.resample(wav, orig_sr=int(sr), target_sr=JUDGE_RATE).astype(np.float32)
  return wav


# --- intelligibility --------------------------------------------------------------------------

# Closed-set search: one JSGF grammar of every sentence, decoded with
# - no filler words: a forced alignment (`set_align_text`, fillers on) of the true sentence
#   ended in `<sil>` after its first word on espeak-ng clips, the silence model taking the
#   speech; without fillers the same alignments reached the sentence's end;
# - wide beams without the per-frame HMM cap (`maxhmmpf`): with the defaults some clips end with
#   no path at all;
# - the forward search's own best path (`bestpath=False`) rather than the lattice's.
# Each setting's effect on accuracy: experiments/results/judges_calibration.md ("ablation").
CLOSED_SEARCH = dict(fsgusefiller=False, beam=1e-80, pbeam=1e-80, wbeam=1e-60, maxhmmpf=-1,
                     bestpath=False)
# +-1 LSB of noise on the samples (espeak-ng pads with exact zeros): with pocketsphinx's own
# dither, 3 of the 5 misses of these settings on 72 espeak-ng clips became right answers. Ours is
# seeded per clip, so a clip always gets the same noise and the same answer (pocketsphinx's
# carries its random state from clip to clip).
DITHER_SEED = 0


def _spelling(sentence: str) -> list[str]:
  # The dictionary is lower-case English with apostrophes; JSGF tokens cannot hold other marks.
  return re.findall(r"[a-z']+", wer.normalize(sentence, "en"))


def _pcm(wav, sr: int) -> bytes:
  """16 kHz int16 bytes of a clip, dithered."""
  samples = np.round(np.clip(to_judge_rate(wav, sr), -1.0, 1.0) * 32767).astype(np.int32)
  samples += np.random.default_rng(DITHER_SEED).integers(-1, 2, samples.shape)
  return np.clip(samples, -32768, 32767).astype(np.int16).tobytes()


class SphinxJudge:
  """pocketsphinx transcription: open vocabulary (`sentences=None`), or which of `sentences`
  was said (closed set).

  Closed set: the grammar search (`CLOSED_SEARCH`) answers a sentence of the set. When the
  search ends inside a sentence (its path did not reach the grammar's end), the answer is the
  sentence nearest to that partial path by word edit distance; when it finds no path at all,
  the answer is "". The answer is in the judge's spelling (`spell`).

  A word missing from the dictionary is given the pronunciation of its split into dictionary
  words ("thunderclap" = "thunder" + "clap"); a word with no such split cannot be said by the
  judge and is listed in `unknown_words` (its sentences keep their other words).
  """

  def __init__(self, sentences: Sequence[str] | None = None, search: dict | None = None):
    """search: the closed-set decoder's settings (default `CLOSED_SEARCH`; the calibration
    bench compares others)."""
    import pocketsphinx  # noqa: PLC0415 (heavy; judges load on first use)
    self.mode = "open" if sentences is None else "closed"
    settings = {} if sentences is None else CLOSED_SEARCH if search is None else search
    self._decoder = pocketsphinx.Decoder(samprate=JUDGE_RATE, loglevel="FATAL", **settings)
    self.unknown_words: list[str] = []
    self.sentences: list[str] = []  # the closed set, as the judge spells them
    if sentences is None:
      return
    self.sentences = sorted({self.spell(s) for s in sentences} - {""})
    if not self.sentences:
      raise JudgeError("closed-set judge: no English sentence to build a grammar from")
    self._known = frozenset(self.sentences)
    self._decoder.add_jsgf_string("sentences", "#JSGF V1.0;\ngrammar sentences;\npublic <s> = "
                                  + " | ".join(f"( {s} )" for s in self.sentences) + ";\n")
    self._decoder.activate_search("sentences")

  def spell(self, sentence: str) -> str:
    """A sentence as this judge writes it: normalised words, less those it cannot say (closed
    set; the open judge's dictionary is fixed, so it keeps every word)."""
    words = _spelling(sentence)
    if self.mode == "closed":
      words = [w for w in words if self._pronounceable(w)]
    return " ".join(words)

  def _pronounceable(self, word: str) -> bool:
    if self._decoder.lookup_word(word) is not None:
      return True
    phones = self._split_pronunciation(word)
    if phones is None:
      if word not in self.unknown_words:
        self.unknown_words.append(word)
      return False
    self._decoder.add_word(word, phones, True)
    return True

  def _split_pronunciation(self, word: str) -> str | None:
    """Phones of `word` as a concatenation of dictionary words (fewest pieces), or None."""
    best: list[list[str] | None] = [[]] + [None] * len(word)
    for end in range(1, len(word) + 1):
      for start in range(end):
        phones = best[start] is not None and self._decoder.lookup_word(word[start:end])
        if phones and (best[end] is None or len(best[start]) + 1 < len(best[end])):
          best[end] = best[start] + [phones]
    return " ".join(best[-1]) if best[-1] else None

  def _nearest(self, partial: str) -> str:
    return min(self.sentences, key=lambda s: jiwer.wer(s, partial))

  def transcribe(self, wav, sr: int) -> str:
    # The decoder's feature state (its noise estimate) carries over from the last clip and can
    # change this clip's answer: reset it, so that a clip's score never depends on the order.
    self._decoder.reinit_feat()
    self._decoder.start_utt()
    self._decoder.process_raw(_pcm(wav, sr), full_utt=True)
    self._decoder.end_utt()
    hyp = self._decoder.hyp()
    text = hyp.hypstr if hyp is not None else ""
    if self.mode == "open" or not text or text in self._known:
      return text
    return self._nearest(text)


# --- speaker similarity -----------------------------------------------------------------------


@functools.cache
def _voice_encoder():
  with warnings.catch_warnings():  # webrtcvad imports the deprecated pkg_resources
    warnings.simplefilter("ignore")
    import resemblyzer  # noqa: PLC0415
  return resemblyzer, resemblyzer.VoiceEncoder(device="cpu", verbose=False)


def voice_embedding(wav, sr: int) -> np.ndarray:
  """Unit-norm GE2E embedding [256] of the voiced part of a clip."""
  resemblyzer, encoder = _voice_encoder()
  voiced = resemblyzer.preprocess_wav(to_judge_rate(wav, sr), source_sr=JUDGE_RATE)
  if voiced.size == 0:
    raise JudgeError("no voiced speech found")
  return encoder.embed_utterance(voiced)


def speaker_similarity(wav_a, sr_a: int, wav_b, sr_b: int) -> float:
  """Cosine similarity of two clips' voices (resemblyzer), in [-1, 1]."""
  return float(np.dot(voice_embedding(wav_a, sr_a), voice_embedding(wav_b, sr_b)))


# --- quality ----------------------------------------------------------------------------------


def dnsmos(wav, sr: int) -> dict:
  """DNSMOS of one clip: {"ovrl", "sig", "bak", "p808"} (MOS, 1..5). A clip under the models'
  9 s window is tiled to fill it (speechmos's rule)."""
  from speechmos import dnsmos as dnsmos_lib  # noqa: PLC0415 (the ONNX models load on first use)
  scores = dnsmos_lib.run(np.clip(to_judge_rate(wav, sr), -1.0, 1.0), JUDGE_RATE)
  return {name: float(scores[f"{name}_mos"]) for name in ("ovrl", "sig", "bak", "p808")}
