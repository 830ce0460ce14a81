"""Codec training losses (spec §1.6): multi-scale mel reconstruction, hinge GAN, feature matching.

Axis letters: b batch, s samples, t frames, m mel bins.

Reconstruction: L1 between log mel spectrograms at three scales, 2^i bins with window 15 * 2^(i-1)
and hop 15 * 2^(i-2) for i in {5, 6, 7} (32/64/128 bins, 240/480/960, 120/240/480 at 24 kHz).
Each scale reuses the tokenizer's own mel front end (`mel.mel_magnitude`: centred reflect-padded
frames, periodic Hann, |STFT|, HTK filters) with the STFT normalised by the window's energy
(torchaudio `normalized=True`, the report's "normalized STFT"), so the three scales have
comparable magnitudes. The loss is the mean over scales of the mean absolute log difference over
each row's valid frames and all bins.

GAN (stage 2): hinge losses averaged over sub-discriminators; feature matching is the mean over
sub-discriminators of the mean over their layers of the L1 distance between the features of real
(held constant) and generated audio.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mimo_jax.codec import mel
from mimo_jax.codec.config import CodecConfig
from mimo_jax.codec.vocoder import hann_window

# (mel bins, window = n_fft, hop) of each reconstruction scale.
MEL_SCALES: tuple[tuple[int, int, int], ...] = ((32, 240, 120), (64, 480, 240), (128, 960, 480))
# Floor of the normalised mel magnitudes before the log: keeps silence from dominating the L1.
LOG_FLOOR = 1e-5


@functools.lru_cache(maxsize=None)
def scale_config(cfg: CodecConfig, n_mels: int, window: int, hop: int) -> CodecConfig:
  """The codec config with one loss scale's STFT and mel settings (for `mel.mel_magnitude`)."""
  return cfg.replace(n_mels=n_mels, nfft=window, window_size=window, hop_length=hop)


def log_mel(scfg: CodecConfig, wav_bs: jax.Array, lengths_b: jax.Array) -> tuple[jax.Array,
                                                                                 jax.Array]:
  """Window-normalised log-mel [b, t, m] of waveforms (centred frames) and frames per row."""
  half = scfg.nfft // 2
  padded_bs = jnp.pad(wav_bs.astype(jnp.float32), ((0, 0), (half, half)), mode="reflect")
  frames_b = mel.num_frames(scfg, lengths_b)
  norm = float(np.sqrt(np.sum(np.square(hann_window(scfg.window_size)))))
  magnitude_btm = mel.mel_magnitude(scfg, padded_bs, frames_b) / norm
  return jnp.log(jnp.maximum(magnitude_btm, LOG_FLOOR)), frames_b


def multiscale_mel_loss(cfg: CodecConfig, wav_bs: jax.Array, target_bs: jax.Array,
                        lengths_b: jax.Array,
                        scales: tuple[tuple[int, int, int], ...] = MEL_SCALES) -> jax.Array:
  """Mean over scales of the masked mean |log mel(wav) - log mel(target)| (scalar, fp32).

  wav_bs / target_bs: [b, s] waveforms at cfg.sampling_rate; lengths_b: valid samples per row.
  """
  per_scale = []
  for n_mels, window, hop in scales:
    scfg = scale_config(cfg, n_mels, window, hop)
    a_btm, frames_b = log_mel(scfg, wav_bs, lengths_b)
    b_btm, _ = log_mel(scfg, target_bs, lengths_b)
    valid_bt1 = (jnp.arange(a_btm.shape[1])[None, :] < frames_b[:, None])[..., None]
    count = jnp.maximum(jnp.sum(valid_bt1), 1) * n_mels
    per_scale.append(jnp.sum(jnp.where(valid_bt1, jnp.abs(a_btm - b_btm), 0.0)) / count)
  return jnp.mean(jnp.stack(per_scale))


def discriminator_hinge(real_logits: list[jax.Array], fake_logits: list[jax.Array]) -> jax.Array:
  """Mean over sub-discriminators of mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
  return jnp.mean(jnp.stack([jnp.mean(jax.nn.relu(1 - r)) + jnp.mean(jax.nn.relu(1 + f))
                             for r, f in zip(real_logits, fake_logits)]))


def generator_hinge(fake_logits: list[jax.Array]) -> jax.Array:
  """Mean over sub-discriminators of mean(relu(1 - D(fake)))."""
  return jnp.mean(jnp.stack([jnp.mean(jax.nn.relu(1 - f)) for f in fake_logits]))


def feature_matching(real_features: list[list[jax.Array]],
                     fake_features: list[list[jax.Array]]) -> jax.Array:
  """Mean over sub-discriminators of the mean over layers of L1(real features, fake features);
  real features are constants."""
  per_disc = []
  for real, fake in zip(real_features, fake_features):
    per_disc.append(jnp.mean(jnp.stack([
        jnp.mean(jnp.abs(jax.lax.stop_gradient(r) - f)) for r, f in zip(real, fake)])))
  return jnp.mean(jnp.stack(per_disc))
