"""Codec reconstruction metrics of a folder of audio files (`python -m mimo_jax.eval_codec`, the
codec benchmark).

Every audio file (wav, flac, ogg, mp3) is encoded with the first n_q stages and decoded; the
metrics of `codec_metrics` compare the reconstruction with the input (mono, at the codec's
rate). Unreadable files are listed and skipped.
"""

from __future__ import annotations

import os

from mimo_jax.codec import api
from mimo_jax.eval import codec_metrics

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def audio_files(folder: str) -> list[str]:
  found = []
  for root, _, names in os.walk(folder):
    found.extend(os.path.join(root, n) for n in names if n.lower().endswith(AUDIO_SUFFIXES))
  return sorted(found)


def evaluate(params, cfg, paths: list[str], n_q: int) -> dict:
  """Metrics of each readable file and their means: {"files": [...], "mean": {...},
  "skipped": [{"file", "reason"}]}."""
  wavs, names, skipped = [], [], []
  for path in paths:
    try:
      wav, sr = api.load_audio(path)
      wavs.append(api.prepare_audio(wav, sr, cfg, path))
      names.append(path)
    except api.AudioError as e:
      skipped.append({"file": path, "reason": str(e)})
  rows = []
  if wavs:
    codes = api.encode_batch(params, cfg, wavs, cfg.sampling_rate, n_q=n_q)
    for name, wav, recon in zip(names, wavs, api.decode_batch(params, cfg, codes)):
      rows.append({"file": name, **codec_metrics.all_metrics(wav, recon, cfg.sampling_rate)})
  return {"files": rows, "mean": codec_metrics.summarize(rows), "skipped": skipped, "n_q": n_q}
