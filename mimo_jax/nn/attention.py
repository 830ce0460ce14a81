"""Dot-product attention with grouped KV heads, position/segment masks and a KV cache.

Axis letters: b batch, t query length, s key/value length, n query heads, k kv heads,
h head dim, l layers.

Masks are built from explicit token positions and segment ids, so one rule covers causal and
bidirectional stacks, sliding windows, packed sequences (segment ids; positions restart per
segment) and cached decoding (cache slots carry the position and segment of the token written
there; empty slots have segment 0, which no real token uses).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def attention_mask(q_pos_bt: jax.Array, kv_pos_bs: jax.Array, q_seg_bt: jax.Array,
                   kv_seg_bs: jax.Array, *, causal: bool,
                   window: tuple[int, int] | None = None) -> jax.Array:
  """Boolean [b, t, s]: may query t attend to key s.

  `window=(left, right)` keeps keys with q_pos - left <= kv_pos <= q_pos + right (flash-attn's
  `window_size` convention; -1 leaves that side unbounded).
  """
  mask_bts = q_seg_bt[:, :, None] == kv_seg_bs[:, None, :]
  offset_bts = kv_pos_bs[:, None, :] - q_pos_bt[:, :, None]
  if causal:
    mask_bts &= offset_bts <= 0
  if window is not None:
    left, right = window
    if left >= 0:
      mask_bts &= offset_bts >= -left
    if right >= 0:
      mask_bts &= offset_bts <= right
  return mask_bts


def attend(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array,
           mask_bts: jax.Array) -> jax.Array:
  """Softmax(q k^T / sqrt(h)) v with n/k query heads per kv head (HF repeat_kv grouping)."""
  # jax.nn.dot_product_attention handles the grouping, the fp32 softmax and, on GPU, cuDNN.
  return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask_bts[:, None, :, :])


class KVCache(NamedTuple):
  """Keys and values of every layer of one stack, preallocated to a fixed length."""

  k_lbskh: jax.Array
  v_lbskh: jax.Array
  positions_bs: jax.Array  # position of the token in each slot
  segment_ids_bs: jax.Array  # segment of the token in each slot; 0 = empty
  index: jax.Array  # int32 scalar: next slot to write (same for every row)

  @classmethod
  def create(cls, n_layers: int, batch: int, max_len: int, n_kv_heads: int, head_dim: int,
             dtype) -> KVCache:
    shape = (n_layers, batch, max_len, n_kv_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
               jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((batch, max_len), jnp.int32),
               jnp.zeros((), jnp.int32))

  def write_tokens(self, positions_bt: jax.Array, segment_ids_bt: jax.Array) -> KVCache:
    """Records the positions and segments of the t new tokens at slots index..index+t-1.

    The caller must keep index + t <= max_len (dynamic_update_slice would clamp the start).
    """
    return self._replace(
        positions_bs=jax.lax.dynamic_update_slice(
            self.positions_bs, positions_bt.astype(jnp.int32), (0, self.index)),
        segment_ids_bs=jax.lax.dynamic_update_slice(
            self.segment_ids_bs, segment_ids_bt.astype(jnp.int32), (0, self.index)))


def write_layer_kv(cache_bskh: jax.Array, new_btkh: jax.Array, index: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_slice(cache_bskh, new_btkh.astype(cache_bskh.dtype),
                                      (0, index, 0, 0))
