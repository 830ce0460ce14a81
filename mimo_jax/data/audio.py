"""Reading and checking training audio: the codec's checks plus what a corpus must also refuse.

`codec.api.prepare_audio` already mixes to mono, scales integer PCM, resamples to the codec rate
and refuses empty, non-finite and too-short audio. A training corpus must also refuse clips that
are silent (nothing to learn, and they are usually broken recordings) or outside the duration
limits, and it must reach `gs://` files. Every refusal is an `AudioError` whose `reason` is the
skip reason the pre-tokeniser counts.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import soundfile
from etils import epath

from mimo_jax.codec import api
from mimo_jax.codec.api import AudioError
from mimo_jax.codec.config import CodecConfig

SILENT = "silent"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"


@dataclasses.dataclass(frozen=True)
class AudioLimits:
  """What a usable clip is. `silence_peak`: a clip whose largest |sample| is at most this is
  silent (-80 dBFS by default: digital silence or dither, not quiet speech)."""

  min_seconds: float = 0.5
  max_seconds: float = 60.0
  silence_peak: float = 1e-4

  def __post_init__(self):
    if not 0 <= self.min_seconds < self.max_seconds:
      raise ValueError(f"AudioLimits: need 0 <= min_seconds < max_seconds, got "
                       f"{self.min_seconds}, {self.max_seconds}")


def _read(path: str) -> tuple[np.ndarray, int]:
  """float32 samples and rate; the duration is checked from the header before decoding."""
  if "://" not in path:
    return api.load_audio(path)
  file = epath.Path(path)
  if not file.exists():
    raise AudioError(f"{path}: no such audio file", "missing_file")
  try:
    return soundfile.read(io.BytesIO(file.read_bytes()), dtype="float32", always_2d=False)
  except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
    raise AudioError(f"{path}: not a readable audio file ({e})", "unreadable") from None


def _header_seconds(path: str) -> float | None:
  """Duration from the header of a local file (cheap: no decoding), None if unknown."""
  if "://" in path:
    return None
  try:
    info = soundfile.info(path)
  except (soundfile.LibsndfileError, RuntimeError, TypeError):
    return None  # the read that follows names the problem
  return info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else None


def load_clip(path: str, cfg: CodecConfig, limits: AudioLimits) -> np.ndarray:
  """A file -> mono float32 [samples] at cfg.sampling_rate, or AudioError with a `reason`."""
  seconds = _header_seconds(path)
  if seconds is not None and seconds > limits.max_seconds:
    raise AudioError(f"{path}: {seconds:.1f} s is longer than the {limits.max_seconds} s limit",
                     TOO_LONG)
  wav, sr = _read(path)
  return check_clip(wav, sr, cfg, limits, path)


def check_clip(wav, sr: int, cfg: CodecConfig, limits: AudioLimits, name: str) -> np.ndarray:
  """The codec's repairs and checks, then the duration limits and the silence check."""
  wav = api.prepare_audio(wav, sr, cfg, name)
  seconds = len(wav) / cfg.sampling_rate
  if seconds > limits.max_seconds:
    raise AudioError(f"{name}: {seconds:.1f} s is longer than the {limits.max_seconds} s limit",
                     TOO_LONG)
  if seconds < limits.min_seconds:
    raise AudioError(f"{name}: {seconds:.2f} s is shorter than the {limits.min_seconds} s limit",
                     TOO_SHORT)
  peak = float(np.max(np.abs(wav)))
  if peak <= limits.silence_peak:
    raise AudioError(f"{name}: silent (peak |sample| {peak:.2g} <= {limits.silence_peak:.2g})",
                     SILENT)
  return wav
