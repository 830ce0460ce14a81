"""Official parity of the tiny tokenizer: encoder, RVQ, decoder and vocoder against the arrays the
official PyTorch code computed (tests/data/official_tiny_a/README.md, "Audio tokenizer")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimo_jax.codec import decoder, encoder, rvq
from tests.codec.common import official_codec, official_io

_encode = jax.jit(encoder.encode_features, static_argnums=1)
_decode_mel = jax.jit(decoder.decode_mel, static_argnums=1)
_decode_wav = jax.jit(decoder.decode_wav, static_argnums=1)
# Max |difference| measured (experiments/results/official_parity.md): encoder output 4.9e-6,
# coarse mel 2.4e-6, waveform 3.6e-7; these fail a 10x regression.
FEATURES_ATOL = 2e-5
WAV_ATOL = 2e-6


@pytest.fixture(scope="module")
def encoded():
  params, cfg = official_codec()
  mel_tm = official_io()["mel"].T
  return _encode(params["encoder"], cfg, jnp.asarray(mel_tm[None]), jnp.array([len(mel_tm)]))


def test_encoder_matches_official_pre_quantisation_output(encoded):
  features_btd, lengths_b = encoded
  io = official_io()
  assert int(lengths_b[0]) == int(io["enc_length"][0]) == 101
  np.testing.assert_allclose(features_btd[0], io["enc_pre_quant"], rtol=0, atol=FEATURES_ATOL)


def test_rvq_gives_identical_codes_and_codeword_sum(encoded):
  params, cfg = official_codec()
  io = official_io()
  codes_btq, zq_btd = rvq.quantize(params["quantizer"], cfg, encoded[0], n_q=8)
  np.testing.assert_array_equal(codes_btq[0].T, io["codes"])
  np.testing.assert_allclose(zq_btd[0], io["zq"], rtol=0, atol=1e-5)
  zq_from_codes = rvq.dequantize(params["quantizer"], cfg, jnp.asarray(io["codes"].T[None]))
  np.testing.assert_allclose(zq_from_codes[0], io["zq"], rtol=0, atol=1e-5)


def test_decoder_coarse_mel_and_waveform_match_official():
  params, cfg = official_codec()
  io = official_io()
  zq_btd = rvq.dequantize(params["quantizer"], cfg, jnp.asarray(io["codes"].T[None]))
  lengths_b = jnp.array([io["codes"].shape[1]])
  mel_btm, mel_lengths_b = _decode_mel(params["decoder"], cfg, zq_btd, lengths_b)
  assert int(mel_lengths_b[0]) == 404
  np.testing.assert_allclose(mel_btm[0], io["dec_coarse_mel"], rtol=0, atol=FEATURES_ATOL)
  wav_bs, wav_lengths_b = _decode_wav(params["decoder"], cfg, zq_btd, lengths_b)
  assert wav_bs.shape == (1, 101 * 960) and int(wav_lengths_b[0]) == 101 * 960
  np.testing.assert_allclose(wav_bs[0], io["wav_decoded"], rtol=0, atol=WAV_ATOL)


def test_padded_batch_rows_equal_rows_run_alone():
  """Each row of a padded batch gets what the official code gives that row at batch 1, including
  odd lengths (zero-padded before the stride-2 down-sampler) and the last partial frames."""
  params, cfg = official_codec()
  mel_tm = official_io()["mel"].T
  lengths = [401, 256]  # 201 (odd) and 128 (even) steps at 50 Hz
  batch_btm = np.zeros((2, 401, mel_tm.shape[1]), np.float32)
  for i, n in enumerate(lengths):
    batch_btm[i, :n] = mel_tm[:n]
  batch_btm[1, 300:] = 7.0  # garbage in the padding must not leak
  feats_btd, lengths25_b = _encode(params["encoder"], cfg, jnp.asarray(batch_btm),
                                   jnp.array(lengths))
  assert lengths25_b.tolist() == [cfg.mel_to_code_length(n) for n in lengths] == [101, 64]
  zq_btd = rvq.quantize(params["quantizer"], cfg, feats_btd, n_q=8)[1]
  wav_bs, _ = _decode_wav(params["decoder"], cfg, zq_btd, lengths25_b)
  for i, n in enumerate(lengths):
    alone_btd, alone_len = _encode(params["encoder"], cfg, jnp.asarray(mel_tm[None, :n]),
                                   jnp.array([n]))
    t = int(alone_len[0])
    np.testing.assert_allclose(feats_btd[i, :t], alone_btd[0], rtol=0, atol=1e-5)
    assert not np.any(np.asarray(feats_btd[i, t:]))
    alone_wav, _ = _decode_wav(params["decoder"], cfg, zq_btd[i:i + 1, :t], jnp.array([t]))
    np.testing.assert_allclose(wav_bs[i, :t * 960], alone_wav[0], rtol=0, atol=1e-5)
    assert not np.any(np.asarray(wav_bs[i, t * 960:]))
