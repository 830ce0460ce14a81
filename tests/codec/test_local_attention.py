"""Blocked local attention (the codec's windowed stacks) against the masked [t, t] reference, and
the codec's runtime options (bf16, remat)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimo_jax.codec import layers as layers_lib
from mimo_jax.nn.attention import attend, attention_mask
from tests.codec.common import official_codec


def _qkv_and_rows(t: int, lengths: list[int], seed: int = 0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((len(lengths), t, 4, 8)), jnp.float32)
             for _ in range(3))
  positions_bt = jnp.broadcast_to(jnp.arange(t), (len(lengths), t))
  segment_ids_bt = (positions_bt < jnp.asarray(lengths)[:, None]).astype(jnp.int32)
  return (q, k, v), positions_bt, segment_ids_bt


# Lengths below, at and above multiples of the block w = max(left, right), rows padded in a batch.
@pytest.mark.parametrize("t, lengths, window, causal", [
    (95, [95, 41], (40, 10), False),   # the vocoder's window; w = 40, t not a multiple
    (80, [80, 79], (40, 10), False),   # t a multiple of w
    (7, [7, 3], (40, 10), False),      # shorter than one block
    (33, [33, 20], (5, 12), False),    # right-heavy: two blocks after, one before
    (50, [50, 17], (6, -1), True),     # causal sliding window
    (29, [29, 29], (0, 3), False),     # look-ahead only
])
def test_blocked_equals_masked_values_and_gradients(t, lengths, window, causal):
  qkv, positions_bt, segment_ids_bt = _qkv_and_rows(t, lengths)
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(qkv[0].shape), jnp.float32)

  @jax.jit
  def values_and_grads(q, k, v):
    mask_btt = attention_mask(positions_bt, positions_bt, segment_ids_bt, segment_ids_bt,
                              causal=causal, window=window)
    masked = lambda q, k, v: attend(q, k, v, mask_btt)
    blocked = lambda q, k, v: layers_lib.local_attend(q, k, v, positions_bt, segment_ids_bt,
                                                      causal=causal, window=window)
    # A fixed random cotangent, so every output (padding included) feeds the gradients.
    grads = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=(0, 1, 2))(
        q, k, v)
    return (blocked(q, k, v), masked(q, k, v)), (grads(blocked), grads(masked))

  (o_blocked, o_masked), (g_blocked, g_masked) = values_and_grads(*qkv)
  np.testing.assert_allclose(o_blocked, o_masked, rtol=0, atol=1e-6)
  for a, b in zip(g_blocked, g_masked):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_unbounded_window_is_refused():
  qkv, positions_bt, segment_ids_bt = _qkv_and_rows(8, [8])
  with pytest.raises(ValueError, match="bounded window"):
    layers_lib.local_attend(*qkv, positions_bt, segment_ids_bt, causal=False, window=(4, -1))


def _stack(which: str):
  """(layers, cfg, width, stack keywords) of one of the official tiny codec's transformer
  stacks."""
  params, cfg = official_codec()
  if which == "vocoder":
    return (params["decoder"]["vocoder"]["layers"], cfg, cfg.vocoder_dim,
            dict(n_heads=cfg.vocoder_attention_heads, causal=False,
                 window=cfg.vocoder_attn_window_size))
  return (params["encoder"]["layers"], cfg, cfg.d_model,
          dict(n_heads=cfg.encoder_attention_heads, causal=cfg.encoder_causal,
               window=cfg.encoder_attn_window_size, skip_layer_id=cfg.encoder_skip_layer_id))


def _padded_rows(lengths: list[int], d: int) -> tuple[jax.Array, jax.Array]:
  """Random rows with garbage past each length (it must not leak into the valid steps)."""
  x_btd = np.random.default_rng(2).standard_normal((len(lengths), max(lengths), d))
  return jnp.asarray(x_btd, jnp.float32), jnp.asarray(lengths)


def test_vocoder_stack_blocked_equals_masked_and_remat_with_padding_and_gradients():
  """The vocoder's (40, 10) window over a padded batch whose lengths are not multiples of the
  block (40): blocked = masked in values and gradients, remat changes no gradient, and the short
  row run alone gives its rows of the batch."""
  layers, cfg, d, kw = _stack("vocoder")
  x_btd, lengths_b = _padded_rows([130, 57], d)
  valid_bt1 = layers_lib.valid_mask(lengths_b, x_btd.shape[1])

  @jax.jit
  def outputs_and_grads(layers, x_btd):
    def loss(layers, x_btd, c):
      y_btd = layers_lib.transformer(layers, x_btd, lengths_b, c, **kw)
      return jnp.sum(jnp.square(y_btd * valid_bt1)), y_btd
    return [jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(layers, x_btd,
                                                                   cfg.replace(**changes))
            for changes in ({"attention": "masked"}, {}, {"remat": True})]

  results = outputs_and_grads(layers, x_btd)
  (_, y_masked), g_masked = results[0]
  for (_, y_btd), g in results[1:]:
    np.testing.assert_allclose(y_btd, y_masked, rtol=0, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_masked)):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(b))))
  alone_btd = jax.jit(layers_lib.transformer, static_argnums=3, static_argnames=tuple(kw))(
      layers, x_btd[1:, :57], lengths_b[1:], cfg, **kw)
  np.testing.assert_allclose(results[1][0][1][1, :57], alone_btd[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("which", ["encoder", "vocoder"])
def test_bf16_stack_stays_close_to_fp32_and_returns_fp32(which):
  """bf16 layers: a sanity bound on the tiny fixture (8-bit mantissas through 2 layers), not a
  parity claim; the stack hands float32 back to the norms, RVQ and ISTFT head that follow."""
  layers, cfg, d, kw = _stack(which)
  x_btd, lengths_b = _padded_rows([75, 40], d)
  run = jax.jit(layers_lib.transformer, static_argnums=3, static_argnames=tuple(kw))
  y32, y16 = (run(layers, x_btd, lengths_b, cfg.replace(dtype=d), **kw)
              for d in ("float32", "bfloat16"))
  assert y16.dtype == jnp.float32
  relative_rms = float(jnp.sqrt(jnp.mean(jnp.square(y16 - y32)) / jnp.mean(jnp.square(y32))))
  assert relative_rms < 0.02, relative_rms
