"""Sample-rate conversion as the official tokenizer does it: torchaudio's `functional.resample`
with its defaults (band-limited sinc interpolation, Hann window over 6 zero crossings each side,
cutoff at 0.99 of the lower Nyquist frequency), in numpy, with no torch at run time.

Axis letters: j output phase (0..new-1), m filter tap, k block of `new` outputs.

With the rates reduced by their gcd to orig:new, output j + k * new sits at input time
(k * orig + j * orig / new) samples, so phase j always uses the same filter, shifted by `orig`
input samples per block (polyphase). The filters are computed in float64 and applied with
float64 accumulation; the result is rounded to float32 once.
"""

from __future__ import annotations

import functools
import math

import numpy as np

ZERO_CROSSINGS = 6  # torchaudio's lowpass_filter_width
ROLLOFF = 0.99  # cutoff as a fraction of the lower rate's Nyquist frequency
# The filters hold about orig * new values: fine for the rates files come in (44.1 kHz -> 24 kHz
# is 80 x 171), gigabytes for a near-coprime pair such as 24001 -> 24000. Such a pair is refused.
MAX_FILTER_VALUES = 1 << 24


@functools.lru_cache(maxsize=16)
def _filters(orig: int, new: int) -> tuple[np.ndarray, int]:
  """Filters [new, 2 * width + orig] over the input window that starts `width` samples before
  a block's first input sample, and that width."""
  cutoff = min(orig, new) * ROLLOFF
  width = math.ceil(ZERO_CROSSINGS * orig / cutoff)
  taps_m = np.arange(-width, width + orig) / orig
  # Distance from output phase j to tap m, in periods of the cutoff frequency; beyond the
  # window's zero crossings the Hann window is zero (torchaudio clamps, with the same effect).
  t_jm = np.clip((taps_m[None, :] - np.arange(new)[:, None] / new) * cutoff,
                 -ZERO_CROSSINGS, ZERO_CROSSINGS)
  window_jm = np.cos(t_jm * np.pi / (2 * ZERO_CROSSINGS)) ** 2
  return np.sinc(t_jm) * window_jm * (cutoff / orig), width


def resample(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
  """float32 [ceil(n * new_sr / orig_sr)] samples of the 1-D `wav` at `new_sr`; `wav` itself
  when the rates are equal."""
  if orig_sr <= 0 or new_sr <= 0:
    raise ValueError(f"resample: sample rates must be positive, got {orig_sr} -> {new_sr}")
  if wav.ndim != 1:
    raise ValueError(f"resample: expected a 1-D waveform, got shape {wav.shape}")
  if orig_sr == new_sr:
    return wav
  gcd = math.gcd(orig_sr, new_sr)
  orig, new = orig_sr // gcd, new_sr // gcd
  if orig * new > MAX_FILTER_VALUES:
    raise ValueError(f"resample: {orig_sr} Hz -> {new_sr} Hz reduces to {orig}:{new}, whose "
                     f"filters would hold {orig * new:,} values (limit {MAX_FILTER_VALUES:,})")
  filters_jm, width = _filters(orig, new)
  n = len(wav)
  blocks = n // orig + 1
  padded = np.pad(wav.astype(np.float64), (width, width + orig))
  # One tap at a time keeps memory at the output's size whatever the filter length.
  out_kj = np.zeros((blocks, new))
  for m in range(filters_jm.shape[1]):
    out_kj += padded[m:m + orig * blocks:orig, None] * filters_jm[None, :, m]
  return out_kj.reshape(-1)[:-(-n * new // orig)].astype(np.float32)
