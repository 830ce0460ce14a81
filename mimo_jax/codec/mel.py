"""Log-mel front end of the tokenizer (the official `wav2mel`, torchaudio `MelSpectrogram`), in JAX.

Axis letters: b batch, s samples, t frames, n samples of one frame (n_fft), f FFT bins, m mel bins.

Centred frames with reflect padding, periodic Hann, |STFT| (power 1), HTK mel filters without
normalisation (librosa builds the filter bank), natural log floored at 1e-7. Rows of a batch are
slices of a centre-padded waveform (`frame_rows`), so that a long file cut into segments gives
the frames of one whole-file STFT, and a row's mel does not depend on its batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import librosa
import numpy as np

from mimo_jax.codec.config import CodecConfig
from mimo_jax.codec.vocoder import hann_window

LOG_FLOOR = 1e-7


@functools.lru_cache(maxsize=None)
def mel_filter_bank(cfg: CodecConfig) -> np.ndarray:
  """[f, m] HTK mel filters without area normalisation (torchaudio's defaults), float32."""
  return librosa.filters.mel(sr=cfg.sampling_rate, n_fft=cfg.nfft, n_mels=cfg.n_mels,
                             fmin=cfg.fmin, fmax=cfg.fmax, htk=True, norm=None,
                             dtype=np.float32).T


def num_frames(cfg: CodecConfig, num_samples):
  """Frames of a centred STFT: floor(samples / hop) + 1 (works on ints and arrays)."""
  return num_samples // cfg.hop_length + 1


def min_samples(cfg: CodecConfig) -> int:
  """Reflect padding of n_fft // 2 needs a longer signal (torch raises below this)."""
  return cfg.nfft // 2 + 1


def frame_rows(cfg: CodecConfig, wav_s: np.ndarray,
               max_frames: int) -> list[tuple[np.ndarray, int]]:
  """Splits one waveform's centred STFT into rows of at most max_frames frames.

  The centre (reflect) padding is applied once to the whole signal, so row k holds exactly the
  samples its frames read and the frames of all rows equal those of one whole-signal STFT (the
  official code takes the mel of the whole file, then cuts it into segments).
  Returns (samples of the row, number of frames).
  """
  padded_s = np.pad(wav_s, cfg.nfft // 2, mode="reflect")
  total = num_frames(cfg, len(wav_s))
  rows = []
  for first in range(0, total, max_frames):
    n = min(max_frames, total - first)
    start = first * cfg.hop_length
    rows.append((padded_s[start:start + (n - 1) * cfg.hop_length + cfg.nfft], n))
  return rows


def row_samples(cfg: CodecConfig, frames: int) -> int:
  """Samples a row of `frames` frames holds (see frame_rows)."""
  return (frames - 1) * cfg.hop_length + cfg.nfft


def mel_magnitude(cfg: CodecConfig, rows_bs: jax.Array, frames_b: jax.Array) -> jax.Array:
  """Linear mel magnitudes [b, t, m] of rows made by `frame_rows` (zero-padded to a common length);
  frames past a row's own count are zero."""
  b, s = rows_bs.shape
  t = (s - cfg.nfft) // cfg.hop_length + 1
  src_tn = np.arange(t)[:, None] * cfg.hop_length + np.arange(cfg.nfft)[None, :]
  frames_btn = rows_bs[:, src_tn]
  window_n = jnp.asarray(hann_window(cfg.window_size))
  magnitude_btf = jnp.abs(jnp.fft.rfft(frames_btn * window_n, axis=-1))
  mel_btm = jnp.einsum("btf,fm->btm", magnitude_btf, jnp.asarray(mel_filter_bank(cfg)))
  valid_bt1 = (jnp.arange(t)[None, :] < frames_b[:, None])[..., None]
  return jnp.where(valid_bt1, mel_btm, 0.0)


def log_mel(cfg: CodecConfig, rows_bs: jax.Array, frames_b: jax.Array) -> jax.Array:
  """Log-mel [b, t, m], the encoder's input."""
  return jnp.log(jnp.maximum(mel_magnitude(cfg, rows_bs, frames_b), LOG_FLOOR))
