"""Reconstruction metrics of the codec (spec §1.7): mel distance, STOI, PESQ NB / WB, SI-SDR.

All take a reference and an estimate of the same signal as float NumPy arrays at `sr` (the
estimate is cut or zero-padded to the reference's length first):

- mel distance: the training reconstruction loss (`codec.losses`, mean over the 32/64/128-bin
  scales of the mean |log mel difference|), computed here with librosa so the metric does not
  depend on the code it evaluates; lower is better.
- STOI (pystoi, which resamples to 10 kHz itself); 0..1.
- PESQ (ITU-T P.862, `pesq`): narrow-band on the signals resampled to 8 kHz, wide-band at 16 kHz;
  -0.5..4.5. PESQ refuses some inputs (no speech found, too short): those give NaN and the
  reason is returned beside the score.
- SI-SDR (scale-invariant signal-to-distortion ratio, dB) on zero-mean signals.
"""

from __future__ import annotations

import librosa
import numpy as np
import pesq as pesq_lib
import pystoi

from mimo_jax.codec import losses

NB_RATE, WB_RATE = 8000, 16000


def match_length(reference: np.ndarray, estimate: np.ndarray) -> np.ndarray:
  """The estimate cut or zero-padded to the reference's length."""
  out = np.zeros_like(reference, dtype=np.float32)
  n = min(len(reference), len(estimate))
  out[:n] = estimate[:n]
  return out


def _log_mel(wav: np.ndarray, sr: int, n_mels: int, window: int, hop: int) -> np.ndarray:
  spec = librosa.feature.melspectrogram(
      y=wav.astype(np.float32), sr=sr, n_fft=window, hop_length=hop, win_length=window,
      window="hann", center=True, pad_mode="reflect", power=1.0, n_mels=n_mels, htk=True,
      norm=None)
  spec /= np.sqrt(np.sum(np.square(librosa.filters.get_window("hann", window, fftbins=True))))
  return np.log(np.maximum(spec, losses.LOG_FLOOR))


def mel_distance(reference: np.ndarray, estimate: np.ndarray, sr: int) -> float:
  return float(np.mean([np.mean(np.abs(_log_mel(reference, sr, *scale) -
                                        _log_mel(estimate, sr, *scale)))
                        for scale in losses.MEL_SCALES]))


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
  reference = reference.astype(np.float64) - np.mean(reference)
  estimate = estimate.astype(np.float64) - np.mean(estimate)
  scale = np.dot(estimate, reference) / max(np.dot(reference, reference), 1e-12)
  target = scale * reference
  noise = estimate - target
  return float(10 * np.log10(max(np.dot(target, target), 1e-12) / max(np.dot(noise, noise),
                                                                      1e-12)))


def stoi(reference: np.ndarray, estimate: np.ndarray, sr: int) -> float:
  return float(pystoi.stoi(reference.astype(np.float64), estimate.astype(np.float64), sr))


def pesq(reference: np.ndarray, estimate: np.ndarray, sr: int,
         band: str) -> tuple[float, str | None]:
  """(PESQ score, None) in band "nb" (8 kHz) or "wb" (16 kHz), or (NaN, why it was refused)."""
  rate = {"nb": NB_RATE, "wb": WB_RATE}[band]
  ref = librosa.resample(reference.astype(np.float32), orig_sr=sr, target_sr=rate)
  est = librosa.resample(estimate.astype(np.float32), orig_sr=sr, target_sr=rate)
  try:
    return float(pesq_lib.pesq(rate, ref, est, band)), None
  except (pesq_lib.PesqError, ValueError) as e:
    # pesq 0.0.4 raises ValueError while formatting some of its own errors (e.g. silence).
    return float("nan"), f"{type(e).__name__}: {e}"


def all_metrics(reference: np.ndarray, estimate: np.ndarray, sr: int) -> dict:
  """Every metric of one pair; `notes` lists why any score is NaN."""
  estimate = match_length(reference, estimate)
  out = {"mel_distance": mel_distance(reference, estimate, sr),
         "stoi": stoi(reference, estimate, sr), "si_sdr": si_sdr(reference, estimate)}
  notes = []
  for band in ("nb", "wb"):
    out[f"pesq_{band}"], why = pesq(reference, estimate, sr, band)
    if why:
      notes.append(f"pesq_{band}: {why}")
  out["notes"] = notes
  return out


def summarize(rows: list[dict]) -> dict:
  """Mean of each metric over the rows with a finite score, and how many rows that is."""
  summary = {}
  for key in ("mel_distance", "stoi", "pesq_nb", "pesq_wb", "si_sdr"):
    values = [r[key] for r in rows if np.isfinite(r[key])]
    summary[key] = float(np.mean(values)) if values else float("nan")
    summary[f"{key}_count"] = len(values)
  return summary
