"""A Qwen2 decoder stack: pre-RMSNorm attention (q/k/v bias, no o bias) + SwiGLU, scanned.

The same stack is the 7B backbone (causal), the patch encoder (bidirectional within a patch) and
the patch decoder (causal); `StackConfig` picks the shape and the mask. Layers are stored stacked
on a leading axis and run with `jax.lax.scan`, so compile time does not grow with depth
(`scan_layers=False` unrolls that loop over the same stacked params).

Params: {"layers": {... each leaf [l, ...]}, "norm": {"scale": [d]}}, names as in HF Qwen2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mimo_jax import sharding
from mimo_jax.config import StackConfig
from mimo_jax.nn.attention import KVCache, attend, attention_mask, self_attend, write_layer_kv
from mimo_jax.nn.mlp import swiglu, swiglu_specs
from mimo_jax.nn.norms import rms_norm
from mimo_jax.nn.params import ParamSpec, stack_specs
from mimo_jax.nn.rope import apply_rope, rope_tables

_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def layer_specs(cfg: StackConfig) -> dict:
  d, q_dim, kv_dim = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  norm = lambda: {"scale": ParamSpec((d,), ("embed",), "ones")}
  return {
      "input_layernorm": norm(),
      "self_attn": {
          "q_proj": {"kernel": ParamSpec((d, q_dim), ("embed", "heads")),
                     "bias": ParamSpec((q_dim,), ("heads",), "zeros")},
          "k_proj": {"kernel": ParamSpec((d, kv_dim), ("embed", "kv_heads")),
                     "bias": ParamSpec((kv_dim,), ("kv_heads",), "zeros")},
          "v_proj": {"kernel": ParamSpec((d, kv_dim), ("embed", "kv_heads")),
                     "bias": ParamSpec((kv_dim,), ("kv_heads",), "zeros")},
          "o_proj": {"kernel": ParamSpec((q_dim, d), ("heads", "embed"))},
      },
      "post_attention_layernorm": norm(),
      "mlp": swiglu_specs(d, cfg.d_ff),
  }


def stack_param_specs(cfg: StackConfig) -> dict:
  return {"layers": stack_specs(layer_specs(cfg), cfg.n_layers),
          "norm": {"scale": ParamSpec((cfg.d_model,), ("embed",), "ones")}}


def init_cache(cfg: StackConfig, batch: int, max_len: int) -> KVCache:
  return KVCache.create(cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.head_dim, cfg.dtype)


def _project(x_btd: jax.Array, proj: dict, n: int, h: int) -> jax.Array:
  y_bte = jnp.einsum("btd,de->bte", x_btd, proj["kernel"]) + proj["bias"]
  return y_bte.reshape(*y_bte.shape[:2], n, h)


def _layer(cfg: StackConfig, layer: dict, x_btd: jax.Array, cos_bth: jax.Array,
           sin_bth: jax.Array, attn_fn, kv_cache, index, input_normed_dtype=None):
  """One decoder layer. attn_fn(q_btnh, k_bskh, v_bskh) -> o_btnh; kv_cache is None or this
  layer's (k_bskh, v_bskh) to update."""
  attn = layer["self_attn"]
  h_btd = rms_norm(x_btd, layer["input_layernorm"]["scale"], cfg.norm_eps, input_normed_dtype)
  q_btnh = apply_rope(_project(h_btd, attn["q_proj"], cfg.n_heads, cfg.head_dim), cos_bth, sin_bth)
  k_btkh = apply_rope(_project(h_btd, attn["k_proj"], cfg.n_kv_heads, cfg.head_dim),
                      cos_bth, sin_bth)
  v_btkh = _project(h_btd, attn["v_proj"], cfg.n_kv_heads, cfg.head_dim)
  q_btnh = sharding.constrain(q_btnh, ("batch", "length", "activation_heads", None))
  if kv_cache is not None:
    k_bskh, v_bskh = (write_layer_kv(c, new, index) for c, new in zip(kv_cache, (k_btkh, v_btkh)))
    kv_cache = (k_bskh, v_bskh)
  else:
    k_bskh, v_bskh = k_btkh, v_btkh
  o_btnh = attn_fn(q_btnh, k_bskh, v_bskh)
  o_bte = o_btnh.reshape(*o_btnh.shape[:2], -1)
  x_btd = x_btd + jnp.einsum("bte,ed->btd", o_bte, attn["o_proj"]["kernel"])
  h_btd = rms_norm(x_btd, layer["post_attention_layernorm"]["scale"], cfg.norm_eps)
  x_btd = x_btd + swiglu(layer["mlp"], h_btd)
  return sharding.constrain(x_btd, ("batch", "length", "activation_embed")), kv_cache


def stack_forward(params: dict, x_btd: jax.Array, cfg: StackConfig, *,
                  positions_bt: jax.Array | None = None,
                  segment_ids_bt: jax.Array | None = None,
                  cache: KVCache | None = None,
                  torch_input_dtype=None,
                  dropout_key: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
  """Runs the stack over x_btd; returns the final-normed hidden states and the updated cache.

  positions default to 0..t-1 and segment ids to 1 (one sequence per row). With a cache, the t
  tokens are appended at cache.index and attend to every earlier slot of their segment.
  Without a cache, cfg.attention picks the attention implementation (`self_attend`); with one,
  attention is always "xla" over the cache slots.

  torch_input_dtype (e.g. bfloat16) reproduces a PyTorch Qwen2 stack with cfg.dtype weights fed
  inputs of that narrower dtype, as the official patch encoder is: the RoPE tables and the first
  layer's normalised input are rounded to it; after the first residual add PyTorch's promotion
  makes everything cfg.dtype again.

  dropout_key (training only) turns on cfg.attention_dropout, a key per layer; without one the
  stack is deterministic (evaluation, generation).
  """
  b, t, _ = x_btd.shape
  dtype = jnp.dtype(cfg.dtype)
  if positions_bt is None:
    positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  if segment_ids_bt is None:
    segment_ids_bt = jnp.ones((b, t), jnp.int32)
  x_btd = sharding.constrain(x_btd.astype(dtype), ("batch", "length", "activation_embed"))
  cos_bth, sin_bth = rope_tables(positions_bt, cfg.head_dim, cfg.rope_theta)

  if cache is None:
    kv_pos_bs, kv_seg_bs, index = positions_bt, segment_ids_bt, None
  else:
    cache = cache.write_tokens(positions_bt, segment_ids_bt)
    kv_pos_bs, kv_seg_bs, index = cache.positions_bs, cache.segment_ids_bs, cache.index
  if cache is None and cfg.attention != "xla":
    attn_fn = functools.partial(self_attend, positions_bt=positions_bt,
                                segment_ids_bt=segment_ids_bt, causal=cfg.causal,
                                impl=cfg.attention)
  else:
    mask_bts = attention_mask(positions_bt, kv_pos_bs, segment_ids_bt, kv_seg_bs,
                              causal=cfg.causal)
    attn_fn = lambda q_btnh, k_bskh, v_bskh: attend(q_btnh, k_bskh, v_bskh, mask_bts)
  layer_keys = None
  if dropout_key is not None and cfg.attention_dropout > 0:
    if cache is not None or cfg.attention != "xla":
      raise ValueError(f"stack_forward: attention dropout needs attention='xla' and no KV cache "
                       f"(got attention={cfg.attention!r}, cache={cache is not None})")
    layer_keys = jax.random.split(dropout_key, cfg.n_layers)

  def layer_attn(key):
    if key is None:
      return attn_fn
    return lambda q_btnh, k_bskh, v_bskh: attend(q_btnh, k_bskh, v_bskh, mask_bts,
                                                 dropout_rate=cfg.attention_dropout,
                                                 dropout_key=key)

  cast = lambda tree: jax.tree.map(lambda w: w.astype(dtype), tree)
  layers = params["layers"]
  if torch_input_dtype is not None:
    if cache is not None:
      raise ValueError("stack_forward: torch_input_dtype emulation does not support a KV cache")
    cos_bth, sin_bth = (t.astype(torch_input_dtype).astype(jnp.float32)
                        for t in (cos_bth, sin_bth))
    first = lambda tree: jax.tree.map(lambda w: w[0], tree)
    rest = lambda tree: jax.tree.map(lambda w: w[1:], tree)
    x_btd, _ = _layer(cfg, cast(first(layers)), x_btd, cos_bth, sin_bth,
                      layer_attn(first(layer_keys)), None, None,
                      input_normed_dtype=torch_input_dtype)
    layers, layer_keys = rest(layers), rest(layer_keys)

  def body(x_btd, xs):
    layer, kv_cache, key = xs
    return _layer(cfg, cast(layer), x_btd, cos_bth, sin_bth, layer_attn(key), kv_cache, index)

  if cfg.remat_policy != "none":
    body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
  kv_in = None if cache is None else (cache.k_lbskh, cache.v_lbskh)
  x_btd, kv_out = jax.lax.scan(body, x_btd, (layers, kv_in, layer_keys),
                               unroll=not cfg.scan_layers)
  if cache is not None:
    cache = cache._replace(k_lbskh=kv_out[0], v_lbskh=kv_out[1], index=cache.index + t)
  return rms_norm(x_btd, params["norm"]["scale"].astype(dtype), cfg.norm_eps), cache
