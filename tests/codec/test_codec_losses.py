"""Codec training losses and discriminators against hand-computed and librosa/NumPy references."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from mimo_jax.codec import config as codec_config
from mimo_jax.codec import discriminators, losses
from tests.codec.common import random_codec_params

CFG = codec_config.tiny()


@pytest.fixture(scope="module")
def noise():
  rng = np.random.default_rng(0)
  return rng.standard_normal((2, 4800)).astype(np.float32) * 0.1


def test_each_scale_is_the_normalised_librosa_mel(noise):
  for n_mels, window, hop in losses.MEL_SCALES:
    scfg = losses.scale_config(CFG, n_mels, window, hop)
    got, frames = losses.log_mel(scfg, jnp.asarray(noise), jnp.array([4800, 4800]))
    ref = librosa.feature.melspectrogram(
        y=noise[0].astype(np.float64), sr=24000, n_fft=window, hop_length=hop, win_length=window,
        window="hann", center=True, pad_mode="reflect", power=1.0, n_mels=n_mels, htk=True,
        norm=None)
    ref /= np.sqrt(np.sum(np.square(librosa.filters.get_window("hann", window, fftbins=True))))
    ref = np.log(np.maximum(ref, losses.LOG_FLOOR)).T
    assert got.shape == (2, 4800 // hop + 1, n_mels) and int(frames[0]) == ref.shape[0]
    np.testing.assert_allclose(np.asarray(got[0]), ref, rtol=1e-4, atol=1e-4)


def test_multiscale_mel_loss_values(noise):
  lengths = jnp.array([4800, 3000])
  wav = jnp.asarray(noise)
  loss = jax.jit(losses.multiscale_mel_loss, static_argnums=0)
  assert float(loss(CFG, wav, wav, lengths)) == 0.0
  # Halving the amplitude shifts every (above-floor) log-mel by log 2 at every scale.
  np.testing.assert_allclose(float(loss(CFG, 0.5 * wav, wav, lengths)),
                             np.log(2.0), rtol=1e-5)
  # Frames count per row up to its own length: row 0 off by log 2 (4800 samples), row 1 by
  # log 4 (3000 samples), pooled over valid frames within each scale.
  scaled = wav * jnp.array([[0.5], [0.25]])
  expected = np.mean([((4800 // hop + 1) * np.log(2) + (3000 // hop + 1) * np.log(4)) /
                      (4800 // hop + 3000 // hop + 2) for _, _, hop in losses.MEL_SCALES])
  np.testing.assert_allclose(float(loss(CFG, scaled, wav, lengths)), expected, rtol=1e-5)


def test_hinge_and_feature_matching_by_hand():
  real = [jnp.array([[2.0, 0.5]]), jnp.array([[-1.0]])]
  fake = [jnp.array([[-2.0, 0.0]]), jnp.array([[3.0]])]
  # D: disc 1: mean(0, .5) + mean(0, 1) = .25 + .5; disc 2: 2 + 4 -> mean(.75, 6).
  np.testing.assert_allclose(float(losses.discriminator_hinge(real, fake)), 3.375, rtol=1e-6)
  # G: disc 1: mean(3, 1) = 2; disc 2: relu(1 - 3) = 0 -> 1.
  np.testing.assert_allclose(float(losses.generator_hinge(fake)), 1.0, rtol=1e-6)
  feats_real = [[jnp.ones((1, 4)), jnp.zeros((1, 2))], [jnp.full((1, 3), 2.0)]]
  feats_fake = [[jnp.zeros((1, 4)), jnp.full((1, 2), 3.0)], [jnp.full((1, 3), 2.5)]]
  # disc 1: mean(1, 3) = 2; disc 2: .5 -> 1.25. Gradient reaches only the fake features.
  np.testing.assert_allclose(float(losses.feature_matching(feats_real, feats_fake)), 1.25,
                             rtol=1e-6)
  grad_real = jax.grad(lambda r: losses.feature_matching(r, feats_fake))(feats_real)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grad_real))


def test_spectral_norm_converges_to_largest_singular_value():
  kernel = jax.random.normal(jax.random.key(0), (3, 9, 4, 6))
  u = jax.random.normal(jax.random.key(1), (6,))
  normed, u = jax.jit(lambda k, u: jax.lax.fori_loop(
      0, 100, lambda _, c: discriminators.spectral_normalize(k, c[1]), (k, u)))(kernel, u)
  sigma = np.linalg.svd(np.asarray(kernel).reshape(-1, 6), compute_uv=False)[0]
  np.testing.assert_allclose(np.asarray(normed), np.asarray(kernel) / sigma, rtol=1e-4, atol=1e-6)


def test_discriminators_shapes_and_gradients(noise):
  dcfg = discriminators.DiscConfig(periods=(2, 3), mpd_channels=(4, 8, 8), stft_ffts=(256, 128),
                                   stft_filters=4)
  params = random_codec_params(discriminators.disc_specs(dcfg), 0)
  sn = random_codec_params(discriminators.sn_specs(dcfg), 1)
  logits, features, new_sn = jax.jit(discriminators.discriminate, static_argnums=2)(
      params, sn, dcfg, jnp.asarray(noise))
  assert len(logits) == len(features) == 4
  # MPD: 3 strided/plain convs + post; STFT: first + 3 dilated + (3,3) + post.
  assert [len(f) for f in features] == [4, 4, 6, 6]
  assert features[0][0].shape == (2, 800, 2, 4)  # 4800 / 2 = 2400 rows -> stride 3
  assert features[2][-1].shape[-1] == 1 and logits[2].shape[0] == 2
  assert jax.tree.structure(new_sn) == jax.tree.structure(sn)
  grads = jax.jit(jax.grad(lambda p: losses.generator_hinge(
      discriminators.discriminate(p, sn, dcfg, jnp.asarray(noise))[0])))(params)
  assert all(np.any(np.asarray(g)) for g in jax.tree.leaves(grads))
