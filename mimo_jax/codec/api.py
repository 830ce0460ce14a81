"""Waveforms <-> codes: the tokenizer's public API, batched and compiled once per bucket.

Axis letters: b batch (rows), s samples, t frames, q RVQ stages, m mel bins.

`encode` / `decode` take one item, `encode_batch` / `decode_batch` a list; every item is cut into
rows the way the official code cuts it (mel segments of 60 s encoded independently; code chunks of
60 s decoded independently), the rows of all items are padded into batches whose length and size
are rounded up to a few buckets, and each row carries its own valid length, so results do not
depend on what else is in the batch and a new file length rarely triggers a compilation.

Audio checks and repairs (`prepare_audio`): integer PCM is scaled to [-1, 1]; multi-channel audio
[samples, channels] is mixed down by the channel mean (as the official code does); other sample
rates are resampled as the official tokenizer resamples (`codec.resample`: torchaudio's sinc
filter), so a file at any rate gives the official codes; silence is valid input. Empty,
non-finite, too short or mis-shaped audio, or a rate the resampler refuses, raises `AudioError`
naming the problem, before anything reaches JAX.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import soundfile

from mimo_jax.codec import mel, rvq
from mimo_jax.codec.config import CodecConfig
from mimo_jax.codec.decoder import decode_wav
from mimo_jax.codec.encoder import encode_features
from mimo_jax.codec.resample import resample

SEGMENT_SECONDS = 60  # official encode segments (6000 mel frames) and decode chunks (1500 codes)
DEFAULT_N_Q = 8  # the stages the LM uses
MAX_CHANNELS = 16  # a wider "channel" axis is almost surely [channels, samples]: refuse it
MAX_BATCH = 8  # rows per compiled call


class AudioError(ValueError):
  """Audio that cannot be encoded; the message says why and `reason` names the kind of problem
  (a short key that data pipelines count skipped files by)."""

  def __init__(self, message: str, reason: str = "invalid_audio"):
    super().__init__(message)
    self.reason = reason


def load_audio(path: str) -> tuple[np.ndarray, int]:
  """Reads a file with soundfile: float32 [samples] or [samples, channels] and its sample rate."""
  if not os.path.isfile(path):
    raise AudioError(f"{path}: no such audio file", "missing_file")
  try:
    wav, sr = soundfile.read(path, dtype="float32", always_2d=False)
  except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
    raise AudioError(f"{path}: not a readable audio file ({e})", "unreadable") from None
  return wav, sr


def prepare_audio(wav, sr: int, cfg: CodecConfig, name: str = "audio") -> np.ndarray:
  """Validates and repairs one waveform: mono float32 at cfg.sampling_rate (see module doc)."""
  wav = np.asarray(wav)
  if not isinstance(sr, (int, np.integer)) or sr <= 0:
    raise AudioError(f"{name}: sample rate must be a positive integer, got {sr!r}")
  if wav.dtype.kind in "iu":
    wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max)
  elif wav.dtype.kind != "f":
    raise AudioError(f"{name}: expected float or integer PCM samples, got dtype {wav.dtype}")
  if wav.ndim == 2:
    if wav.shape[1] > MAX_CHANNELS:
      raise AudioError(f"{name}: shape {wav.shape} has {wav.shape[1]} channels; 2-D audio must "
                       f"be [samples, channels]")
    wav = wav.mean(axis=1)
  elif wav.ndim != 1:
    raise AudioError(f"{name}: expected [samples] or [samples, channels], got shape {wav.shape}")
  if wav.size == 0:
    raise AudioError(f"{name}: empty audio", "empty")
  bad = int(np.sum(~np.isfinite(wav)))
  if bad:
    raise AudioError(f"{name}: {bad} non-finite sample(s) (NaN or inf)", "non_finite")
  wav = wav.astype(np.float32)
  if sr != cfg.sampling_rate:
    try:
      wav = resample(wav, int(sr), cfg.sampling_rate)
    except ValueError as e:
      raise AudioError(f"{name}: {e}", "unsupported_rate") from None
  if len(wav) < mel.min_samples(cfg):
    raise AudioError(f"{name}: {len(wav)} samples at {cfg.sampling_rate} Hz; at least "
                     f"{mel.min_samples(cfg)} are needed", "too_short")
  return wav


def bucket(n: int, minimum: int = 16) -> int:
  """n rounded up to m * 2^e with m in {4, 5, 6, 7}: at most 25% padding, 4 sizes per octave."""
  n = max(n, minimum)
  step = 2 ** max(0, math.floor(math.log2(n)) - 2)
  return -(-n // step) * step


def _batch_bucket(n: int) -> int:
  return 1 << (n - 1).bit_length()


@functools.partial(jax.jit, static_argnums=(1, 2))
def _encode_rows(params, cfg: CodecConfig, n_q: int, rows_bs, frames_b):
  mel_btm = mel.log_mel(cfg, rows_bs, frames_b)
  features_btd, lengths_b = encode_features(params["encoder"], cfg, mel_btm, frames_b)
  codes_btq, _ = rvq.quantize(params["quantizer"], cfg, features_btd, n_q)
  return codes_btq, lengths_b


@functools.partial(jax.jit, static_argnums=1)
def _decode_rows(params, cfg: CodecConfig, codes_btq, lengths_b):
  z_btd = rvq.dequantize(params["quantizer"], cfg, codes_btq)
  return decode_wav(params["decoder"], cfg, z_btd, lengths_b)


def _batches_by_bucket(lengths: list[int]) -> list[list[int]]:
  """Row indices grouped into batches of at most MAX_BATCH rows of one length bucket, so no row
  is padded past its own bucket: the last second of a 60 s clip (a 1-frame row) is not run as a
  second 60 s row."""
  by_bucket: dict[int, list[int]] = {}
  for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
    by_bucket.setdefault(bucket(lengths[i]), []).append(i)
  return [ids[first:first + MAX_BATCH] for ids in by_bucket.values()
          for first in range(0, len(ids), MAX_BATCH)]


def _run_in_buckets(rows: list[tuple[np.ndarray, int]], pad_len, run):
  """Pads rows (array, valid length) into bucketed batches and calls run(batch, lengths);
  returns each row's output trimmed to its valid output length by `run`'s second result."""
  out: list = [None] * len(rows)
  for ids in _batches_by_bucket([n for _, n in rows]):
    size = bucket(rows[ids[0]][1])
    batch = np.zeros((_batch_bucket(len(ids)), pad_len(size), *rows[ids[0]][0].shape[1:]),
                     rows[ids[0]][0].dtype)
    lengths = np.ones((batch.shape[0],), np.int32)  # dummy rows: length 1
    for j, i in enumerate(ids):
      batch[j, :len(rows[i][0])] = rows[i][0]
      lengths[j] = rows[i][1]
    result, out_lengths = run(jnp.asarray(batch), jnp.asarray(lengths))
    result, out_lengths = np.asarray(result), np.asarray(out_lengths)
    for j, i in enumerate(ids):
      out[i] = result[j, :out_lengths[j]]
  return out


def encode_batch(params, cfg: CodecConfig, wavs: list, sr: int, *,
                 n_q: int = DEFAULT_N_Q) -> list[np.ndarray]:
  """Waveforms (any rate / channel layout accepted by prepare_audio) -> codes [t, n_q] each."""
  segment_frames = SEGMENT_SECONDS * cfg.sampling_rate // cfg.hop_length
  rows, owner = [], []
  for k, wav in enumerate(wavs):
    for row in mel.frame_rows(cfg, prepare_audio(wav, sr, cfg, f"audio {k}"), segment_frames):
      rows.append(row)
      owner.append(k)
  codes = _run_in_buckets(
      rows, lambda frames: mel.row_samples(cfg, frames),
      lambda batch, frames: _encode_rows(params, cfg, n_q, batch, frames))
  return [np.concatenate([c for c, o in zip(codes, owner) if o == k]) for k in range(len(wavs))]


def encode(params, cfg: CodecConfig, wav, sr: int, *, n_q: int = DEFAULT_N_Q) -> np.ndarray:
  return encode_batch(params, cfg, [wav], sr, n_q=n_q)[0]


def _check_codes(cfg: CodecConfig, codes, name: str) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim != 2 or not 1 <= codes.shape[1] <= cfg.num_quantizers or codes.shape[0] == 0:
    raise ValueError(f"{name}: expected codes [frames > 0, 1..{cfg.num_quantizers}], got shape "
                     f"{codes.shape}")
  if codes.dtype.kind not in "iu":
    raise ValueError(f"{name}: codes must be integers, got dtype {codes.dtype}")
  sizes = np.asarray(cfg.codebook_sizes[:codes.shape[1]])
  bad = (codes < 0) | (codes >= sizes)
  if bad.any():
    t, q = np.argwhere(bad)[0]
    raise ValueError(f"{name}: code {codes[t, q]} at frame {t}, stage {q} is outside its "
                     f"codebook of {sizes[q]}")
  return codes.astype(np.int32)


def decode_batch(params, cfg: CodecConfig, codes_list: list) -> list[np.ndarray]:
  """Codes [t, n_q] each -> waveforms of t * samples_per_frame samples at cfg.sampling_rate."""
  chunk = SEGMENT_SECONDS * cfg.sampling_rate // cfg.samples_per_frame
  rows, owner = [], []
  for k, codes in enumerate(codes_list):
    codes = _check_codes(cfg, codes, f"codes {k}")
    for first in range(0, len(codes), chunk):
      piece = codes[first:first + chunk]
      rows.append((piece, len(piece)))
      owner.append(k)
  n_q = {r[0].shape[1] for r in rows}
  wavs = []
  for width in sorted(n_q):  # rows of one batch share their number of stages
    ids = [i for i, r in enumerate(rows) if r[0].shape[1] == width]
    outs = _run_in_buckets([rows[i] for i in ids], lambda t: t,
                           lambda batch, lengths: _decode_rows(params, cfg, batch, lengths))
    wavs.extend(zip(ids, outs))
  by_row = dict(wavs)
  return [np.concatenate([by_row[i] for i, o in enumerate(owner) if o == k])
          for k in range(len(codes_list))]


def decode(params, cfg: CodecConfig, codes) -> np.ndarray:
  return decode_batch(params, cfg, [codes])[0]
