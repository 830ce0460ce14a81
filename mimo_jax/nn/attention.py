"""Dot-product attention with grouped KV heads, position/segment masks and a KV cache.

Axis letters: b batch, t query length, s key/value length, n query heads, k kv heads,
h head dim, l layers.

Masks are built from explicit token positions and segment ids, so one rule covers causal and
bidirectional stacks, sliding windows, packed sequences (segment ids; positions restart per
segment) and cached decoding (cache slots carry the position and segment of the token written
there; empty slots have segment 0, which no real token uses).

Self-attention without a cache (training, scoring) can also run without materialising the
[b, n, t, s] scores: `self_attend` dispatches on the implementation named by the config's
`attention` field ("xla" = `attend` with an explicit mask, "splash" = the TPU Pallas splash
kernel, "chunked" = `attend` over query chunks, rematerialised: any backend).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from mimo_jax import sharding


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


def attend(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask_bts: jax.Array, *,
           dropout_rate: float = 0.0, dropout_key: jax.Array | None = None) -> jax.Array:
  """Softmax(q k^T / sqrt(h)) v with n/k query heads per kv head (HF repeat_kv grouping).

  With a dropout key and a positive rate, each attention probability is zeroed with that
  probability and the others scaled by 1 / (1 - rate): PyTorch's attention dropout in training.
  """
  if dropout_key is None or dropout_rate == 0:
    # jax.nn.dot_product_attention handles the grouping, the fp32 softmax and, on GPU, cuDNN.
    return jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskh, mask=mask_bts[:, None, :, :])
  return _attend_with_dropout(q_btnh, k_bskh, v_bskh, mask_bts, dropout_rate, dropout_key)


def _attend_with_dropout(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array,
                         mask_bts: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """`attend` spelled out (jax.nn.dot_product_attention has no dropout); g indexes the query
  heads that share a kv head."""
  b, t, n, h = q_btnh.shape
  n_kv = k_bskh.shape[2]
  q_btkgh = q_btnh.reshape(b, t, n_kv, n // n_kv, h)
  scores_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh,
                            preferred_element_type=jnp.float32) * h ** -0.5
  scores_bkgts = jnp.where(mask_bts[:, None, None], scores_bkgts, jnp.finfo(jnp.float32).min)
  probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1)
  keep_bkgts = jax.random.bernoulli(key, 1 - rate, probs_bkgts.shape)
  probs_bkgts = jnp.where(keep_bkgts, probs_bkgts / (1 - rate), 0).astype(v_bskh.dtype)
  o_btkgh = jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, v_bskh)
  return o_btkgh.reshape(b, t, n, h)


def self_attend(q_btnh: jax.Array, k_btkh: jax.Array, v_btkh: jax.Array, positions_bt: jax.Array,
                segment_ids_bt: jax.Array, *, causal: bool, impl: str) -> jax.Array:
  """Self-attention of t tokens under the `attention_mask` rule, by implementation `impl`.

  "xla" builds the [b, t, t] mask and calls `attend`; "chunked" applies the same rule exactly,
  a chunk of queries at a time (see `chunked_attend`). "splash" never holds the scores (see
  `splash_attend`); it applies causality by token index, which equals the positional rule
  wherever positions increase along a segment: every real token of a packed batch (positions
  restart at each segment start). Padding (segment 0, position 0 in packed rows) only ever sees
  padding, so its outputs may differ between implementations while real tokens' do not.
  """
  if impl == "xla":
    mask_btt = attention_mask(positions_bt, positions_bt, segment_ids_bt, segment_ids_bt,
                              causal=causal)
    return attend(q_btnh, k_btkh, v_btkh, mask_btt)
  if impl == "splash":
    return splash_attend(q_btnh, k_btkh, v_btkh, segment_ids_bt, causal=causal)
  if impl == "chunked":
    return chunked_attend(q_btnh, k_btkh, v_btkh, positions_bt, segment_ids_bt, causal=causal)
  raise ValueError(f"attention: unknown implementation {impl!r}")


# Queries per chunk of "chunked": a 7B row of 8192 keys then holds [32, 512, 8192] fp32 scores
# (512 MiB) at a time instead of 8 GiB.
QUERY_CHUNK = 512


def chunked_attend(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array,
                   positions_bt: jax.Array, segment_ids_bt: jax.Array, *,
                   causal: bool) -> jax.Array:
  """`attend` under the `attention_mask` rule, QUERY_CHUNK queries at a time (lax.map), each
  chunk rematerialised in the backward pass: the [b, n, t, s] scores are never held whole, and
  every query still sees its exact softmax over all keys. Any t (the last chunk is padded)."""
  b, t, n, h = q_btnh.shape
  chunk = min(QUERY_CHUNK, t)
  pad = -t % chunk

  def chunks(x_bt_):  # [b, t, ...] -> [t / chunk, b, chunk, ...]
    x_bt_ = jnp.pad(x_bt_, [(0, 0), (0, pad)] + [(0, 0)] * (x_bt_.ndim - 2))
    return x_bt_.reshape(b, -1, chunk, *x_bt_.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(xs):
    q_bcnh, q_pos_bc, q_seg_bc = xs
    mask_bcs = attention_mask(q_pos_bc, positions_bt, q_seg_bc, segment_ids_bt, causal=causal)
    return attend(q_bcnh, k_bskh, v_bskh, mask_bcs)

  o_xbcnh = jax.lax.map(one_chunk, (chunks(q_btnh), chunks(positions_bt), chunks(segment_ids_bt)))
  return o_xbcnh.swapaxes(0, 1).reshape(b, -1, n, h)[:, :t]


# Kernel tiles, largest first: 512 is the splash default the MaxText v5e/v5p recipes use; the
# kernel needs multiples of 128 (the TPU lane width).
_SPLASH_BLOCKS = (512, 256, 128)


def splash_attend(q_btnh: jax.Array, k_btkh: jax.Array, v_btkh: jax.Array,
                  segment_ids_bt: jax.Array, *, causal: bool) -> jax.Array:
  """TPU Pallas splash (flash) attention: blockwise online softmax, O(t) memory, masked-out blocks
  skipped; grouped KV heads natively; packed rows via segment ids (0 = padding attends to padding,
  as in `attention_mask`). t must be a multiple of 128.

  Under a mesh (`jax.set_mesh`) the kernel runs per shard via `shard_map`, batch over the
  mesh axes of the "batch" rule and heads over those of "activation_heads"; the kernel runs
  compiled when the mesh (or, without one, the default backend) is a TPU, else in Pallas
  interpret mode (slow; for tests).
  """
  b, t, n, h = q_btnh.shape
  n_kv = k_btkh.shape[2]
  block = next((c for c in _SPLASH_BLOCKS if t % c == 0), None)
  if block is None:
    raise ValueError(f"attention='splash': sequence length {t} must be a multiple of 128")
  mesh = jax.sharding.get_abstract_mesh()
  platform = jax.default_backend() if mesh.empty else mesh.abstract_device.platform
  # The kernel takes unscaled logits.
  q_btnh = q_btnh * jnp.asarray(h ** -0.5, q_btnh.dtype)
  attend_fn = functools.partial(_splash_per_shard, causal=causal, block=block,
                                interpret=platform != "tpu")
  if mesh.empty:
    return attend_fn(q_btnh, k_btkh, v_btkh, segment_ids_bt)
  qkv_spec = sharding.logical_to_spec(("batch", "length", "activation_heads", None))
  seg_spec = sharding.logical_to_spec(("batch", "length"))
  if seg_spec[1] is not None:
    raise ValueError("attention='splash': the 'length' axis must not be sharded")
  for what, size, axes in (("batch", b, qkv_spec[0]), ("query heads", n, qkv_spec[2]),
                           ("kv heads", n_kv, qkv_spec[2])):
    shards = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
    if size % shards:
      raise ValueError(f"attention='splash': {what} ({size}) do not divide over mesh axes "
                       f"{axes} ({shards} shards)")
  # check_vma=False: pallas_call does not declare how its outputs vary over the mesh.
  return jax.shard_map(attend_fn, in_specs=(qkv_spec,) * 3 + (seg_spec,), out_specs=qkv_spec,
                       check_vma=False)(q_btnh, k_btkh, v_btkh, segment_ids_bt)


def _splash_per_shard(q_btnh, k_btkh, v_btkh, segment_ids_bt, *, causal: bool, block: int,
                      interpret: bool):
  _, t, n, _ = q_btnh.shape
  kernel = _splash_kernel(n, t, causal, block, interpret)
  heads_first = lambda x_bt_h: x_bt_h.transpose(0, 2, 1, 3)  # the kernel's [heads, len, h]

  def one_row(q_nth, k_kth, v_kth, seg_t):
    return kernel(q_nth, k_kth, v_kth, segment_ids=splash.SegmentIds(q=seg_t, kv=seg_t))

  o_bnth = jax.vmap(one_row)(heads_first(q_btnh), heads_first(k_btkh), heads_first(v_btkh),
                             segment_ids_bt.astype(jnp.int32))
  return heads_first(o_bnth)


@functools.lru_cache(maxsize=None)
def _splash_kernel(n_heads: int, t: int, causal: bool, block: int, interpret: bool):
  # The block-sparsity tables are built on the host from the static mask, once per shape.
  one_head = splash_mask.CausalMask((t, t)) if causal else splash_mask.FullMask((t, t))
  blocks = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                             block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                             block_q_dq=block, block_kv_dq=block)
  # Built on first use, which is inside a trace: evaluated eagerly, so the cached kernel holds
  # concrete mask tables, not tracers of the trace that happened to build it.
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(splash_mask.MultiHeadMask([one_head] * n_heads),
                                  block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


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
