"""RVQ numerics: hand-computed codes and sums, stage padding, and error vs number of stages."""

import jax.numpy as jnp
import numpy as np
import pytest

from mimo_jax.codec import config as codec_config
from mimo_jax.codec import rvq
from tests.codec.common import official_codec, official_io


def _quantizer(cfg, books):
  k = max(cfg.codebook_sizes)
  embed = np.zeros((cfg.num_quantizers, k, cfg.d_model), np.float32)
  for q, book in enumerate(books):
    embed[q, :len(book)] = book
  return {"embed": jnp.asarray(embed)}


def test_codes_and_reconstruction_by_hand():
  # 2-d codebooks: stage 0 has 4 codewords, stage 1 has 2 (its padded rows must never win, even
  # though the zero padding vector would be the nearest one for the second input).
  cfg = codec_config.tiny(d_model=2, encoder_attention_heads=1, decoder_attention_heads=1,
                          num_quantizers=2, codebook_size=(4, 2))
  books = [np.array([[0, 0], [4, 0], [0, 4], [4, 4]], np.float32),
           np.array([[1, 1], [-1, -1]], np.float32)]
  x_btd = jnp.array([[[3.8, 0.9], [0.2, 0.1], [4.4, 3.3]]], jnp.float32)
  codes_btq, zq_btd = rvq.quantize(_quantizer(cfg, books), cfg, x_btd, n_q=2)
  # Stage 0: nearest of (0,0),(4,0),(0,4),(4,4); stage 1: nearest to the residual.
  # (3.8,0.9) -> 1, residual (-0.2,0.9) -> (1,1) at 2.25 vs (-1,-1) at 4.25 -> 0.
  # (0.2,0.1) -> 0, residual (0.2,0.1) -> (1,1) at 1.45 vs 2.65 -> 0.
  # (4.4,3.3) -> 3, residual (0.4,-0.7) -> (1,1) at 3.25 vs (-1,-1) at 2.05 -> 1.
  assert codes_btq[0].tolist() == [[1, 0], [0, 0], [3, 1]]
  np.testing.assert_array_equal(zq_btd[0], [[5, 1], [1, 1], [3, 3]])
  np.testing.assert_array_equal(rvq.dequantize(_quantizer(cfg, books), cfg, codes_btq), zq_btd)
  codes1_btq, zq1_btd = rvq.quantize(_quantizer(cfg, books), cfg, x_btd, n_q=1)
  assert codes1_btq[0, :, 0].tolist() == [1, 0, 3]
  np.testing.assert_array_equal(zq1_btd[0], [[4, 0], [0, 0], [4, 4]])


def test_bad_n_q_is_named():
  params, cfg = official_codec()
  with pytest.raises(ValueError, match="^n_q:"):
    rvq.quantize(params["quantizer"], cfg, jnp.zeros((1, 2, cfg.d_model)), n_q=9)


def test_error_decreases_with_every_stage_on_real_speech():
  params, cfg = official_codec()
  x_btd = jnp.asarray(official_io()["enc_pre_quant"][None])
  errors = [float(jnp.mean(jnp.square(x_btd - rvq.quantize(params["quantizer"], cfg, x_btd, n)[1])))
            for n in range(1, cfg.num_quantizers + 1)]
  assert all(b < a for a, b in zip(errors, errors[1:])), errors
  # Codes of n stages are the first n columns of the codes of more stages.
  codes8 = rvq.quantize(params["quantizer"], cfg, x_btd, 8)[0]
  np.testing.assert_array_equal(rvq.quantize(params["quantizer"], cfg, x_btd, 3)[0],
                                codes8[..., :3])
