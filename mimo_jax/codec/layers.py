"""Building blocks of the tokenizer: its pre-LayerNorm transformer stack, PyTorch-layout convs and a
length-masked GroupNorm.

Axis letters: b batch, t time, d model width, f FFN width, n heads, h head dim, c / o conv input /
output channels, k conv taps, l layers; in blocked attention x = b * blocks, w steps of a block,
s keys of a block and its neighbours.

Every function takes per-row valid lengths (or masks derived from them) so that a padded batch
gives each row exactly what the official code gives that row alone (batch 1): padding never enters
a convolution, a norm statistic or an attention window.

A bounded attention window (the vocoder's 40 left / 10 right frames) is computed block by block
(`local_attend`), so a 60 s clip costs per second what a short one does; the [t, t] mask stays as
the reference (`CodecConfig.attention`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mimo_jax import sharding
from mimo_jax.codec.config import CodecConfig
from mimo_jax.nn.attention import attend, attention_mask
from mimo_jax.nn.norms import layer_norm
from mimo_jax.nn.params import ParamSpec, stack_specs
from mimo_jax.nn.rope import apply_rope, rope_tables


def gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)  # the official ACT2FN["gelu"] / nn.GELU() are exact


def norm_specs(d: int, axis: str | None = "embed") -> dict:
  return {"scale": ParamSpec((d,), (axis,), "ones"), "bias": ParamSpec((d,), (axis,), "zeros")}


def _linear(d_in: int, d_out: int, axes: tuple, bias: bool = True) -> dict:
  specs = {"kernel": ParamSpec((d_in, d_out), axes)}
  if bias:
    specs["bias"] = ParamSpec((d_out,), (axes[1],), "zeros")
  return specs


def transformer_specs(d: int, d_ff: int, n_layers: int) -> dict:
  """The official `TransformerLayer` (k_proj without bias), stacked for scan."""
  layer = {
      "self_attn_layer_norm": norm_specs(d),
      "self_attn": {"q_proj": _linear(d, d, ("embed", "heads")),
                    "k_proj": _linear(d, d, ("embed", "heads"), bias=False),
                    "v_proj": _linear(d, d, ("embed", "heads")),
                    "out_proj": _linear(d, d, ("heads", "embed"))},
      "final_layer_norm": norm_specs(d),
      "fc1": _linear(d, d_ff, ("embed", "mlp")),
      "fc2": _linear(d_ff, d, ("mlp", "embed")),
  }
  return stack_specs(layer, n_layers)


def dense(params: dict, x_btc: jax.Array) -> jax.Array:
  y_bto = jnp.einsum("btc,co->bto", x_btc, params["kernel"])
  return y_bto + params["bias"] if "bias" in params else y_bto


def _layer(layer: dict, x_btd: jax.Array, cos_bth, sin_bth, attend_fn, n_heads: int):
  attn = layer["self_attn"]
  b, t, d = x_btd.shape
  h_btd = layer_norm(x_btd, layer["self_attn_layer_norm"]["scale"],
                     layer["self_attn_layer_norm"]["bias"])
  heads = lambda p: dense(p, h_btd).reshape(b, t, n_heads, d // n_heads)
  q_btnh = apply_rope(heads(attn["q_proj"]), cos_bth, sin_bth)
  k_btnh = apply_rope(heads(attn["k_proj"]), cos_bth, sin_bth)
  q_btnh = sharding.constrain(q_btnh, ("batch", "length", "activation_heads", None))
  o_btnh = attend_fn(q_btnh, k_btnh, heads(attn["v_proj"]))
  x_btd = x_btd + dense(attn["out_proj"], o_btnh.reshape(b, t, d))
  h_btd = layer_norm(x_btd, layer["final_layer_norm"]["scale"], layer["final_layer_norm"]["bias"])
  x_btd = x_btd + dense(layer["fc2"], gelu(dense(layer["fc1"], h_btd)))
  return sharding.constrain(x_btd, ("batch", "length", "activation_embed"))


def local_attend(q_btnh: jax.Array, k_btnh: jax.Array, v_btnh: jax.Array,
                 positions_bt: jax.Array, segment_ids_bt: jax.Array, *, causal: bool,
                 window: tuple[int, int]) -> jax.Array:
  """Self-attention under the `attention_mask` rule with a bounded window, in O(t * window).

  The row is cut into blocks of w = max(left, right) steps (right is 0 when causal); block i
  attends only to blocks i - ceil(left / w) .. i + ceil(right / w), under the exact
  `attention_mask` rule, so every key the full mask would keep is present and each query's
  softmax is the same sum (the dropped keys have probability exactly 0 under the mask). Exact
  wherever positions advance by one per step within a segment (arange, or restarting per
  segment of a packed row), so that the window in positions is the window in steps. The padding
  added to fill the blocks takes segment -1, which no query of the row shares.
  """
  left, right = window
  right = 0 if causal else right
  if left < 0 or right < 0:
    raise ValueError(f"local_attend needs a bounded window, got {window} (causal={causal})")
  b, t, n, h = q_btnh.shape
  w = max(left, right, 1)
  n_blocks, before, after = -(-t // w), -(-left // w), -(-right // w)
  span = (before + 1 + after) * w

  def padded(x_bt_, fill):  # [b, t, ...] -> [b, (before + n_blocks + after) * w, ...]
    widths = [(0, 0), (before * w, n_blocks * w - t + after * w)] + [(0, 0)] * (x_bt_.ndim - 2)
    return jnp.pad(x_bt_, widths, constant_values=fill)

  def query_blocks(x_bt_, fill):  # -> [b * n_blocks, w, ...]
    x_bt_ = padded(x_bt_, fill)[:, before * w:(before + n_blocks) * w]
    return x_bt_.reshape(b * n_blocks, w, *x_bt_.shape[2:])

  def key_blocks(x_bt_, fill):  # -> [b * n_blocks, span, ...]: block i and its neighbours
    x_bt_ = padded(x_bt_, fill)
    shifted = [x_bt_[:, j * w:(j + n_blocks) * w].reshape(b, n_blocks, w, *x_bt_.shape[2:])
               for j in range(before + 1 + after)]
    return jnp.concatenate(shifted, axis=2).reshape(b * n_blocks, span, *x_bt_.shape[2:])

  mask_xws = attention_mask(query_blocks(positions_bt, 0), key_blocks(positions_bt, 0),
                            query_blocks(segment_ids_bt, -1), key_blocks(segment_ids_bt, -1),
                            causal=causal, window=window)
  o_xwnh = attend(query_blocks(q_btnh, 0), key_blocks(k_btnh, 0), key_blocks(v_btnh, 0),
                  mask_xws)
  return o_xwnh.reshape(b, n_blocks * w, n, h)[:, :t]


def _attention_fn(cfg: CodecConfig, positions_bt: jax.Array, segment_ids_bt: jax.Array,
                  causal: bool, window: tuple[int, int]):
  """(q, k, v) -> attention output under the stack's window, by `cfg.attention`.

  A window unbounded on a side the stack can see (left, or right when not causal) needs every
  score of the [t, t] mask it keeps, so it takes the masked path under either choice.
  """
  left, right = window
  if cfg.attention == "blocked" and left >= 0 and (causal or right >= 0):
    return functools.partial(local_attend, positions_bt=positions_bt,
                             segment_ids_bt=segment_ids_bt, causal=causal, window=window)
  mask_bts = attention_mask(positions_bt, positions_bt, segment_ids_bt, segment_ids_bt,
                            causal=causal, window=window)
  return lambda q_btnh, k_btnh, v_btnh: attend(q_btnh, k_btnh, v_btnh, mask_bts)


def transformer(layers: dict, x_btd: jax.Array, lengths_b: jax.Array, cfg: CodecConfig, *,
                n_heads: int, causal: bool, window: tuple[int, int],
                skip_layer_id: int | None = None) -> jax.Array:
  """Runs the stacked layers over rows whose first lengths_b[i] steps are valid.

  RoPE positions restart at 0 in every row (the official per-sequence `get_position_ids`).
  `skip_layer_id` = k adds the output of layer k (1-based) to the last layer's output, the
  encoder's skip connection; it is carried through the scan so no per-layer states are stored.
  The layers compute in `cfg.dtype` (weights cast per layer) and the result comes back in x's
  dtype; `cfg.remat` recomputes each layer in the backward pass.
  """
  b, t, d = x_btd.shape
  dtype = jnp.dtype(cfg.dtype)
  positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  segment_ids_bt = (positions_bt < lengths_b[:, None]).astype(jnp.int32)  # padding: segment 0
  cos_bth, sin_bth = rope_tables(positions_bt, d // n_heads, cfg.rope_theta)
  attend_fn = _attention_fn(cfg, positions_bt, segment_ids_bt, causal, window)
  skip_id = -1 if skip_layer_id is None else skip_layer_id - 1

  def body(carry, xs):
    x_btd, skip_btd = carry
    index, layer = xs
    layer = jax.tree.map(lambda w: w.astype(dtype), layer)
    x_btd = _layer(layer, x_btd, cos_bth, sin_bth, attend_fn, n_heads)
    return (x_btd, jnp.where(index == skip_id, x_btd, skip_btd)), None

  if cfg.remat:
    body = jax.checkpoint(body, prevent_cse=False)  # under scan, CSE cannot merge across steps
  n_layers = jax.tree.leaves(layers)[0].shape[0]
  h_btd = x_btd.astype(dtype)
  (h_btd, skip_btd), _ = jax.lax.scan(
      body, (h_btd, jnp.zeros_like(h_btd)), (jnp.arange(n_layers), layers))
  return (h_btd + skip_btd).astype(x_btd.dtype)


def valid_mask(lengths_b: jax.Array, t: int) -> jax.Array:
  """[b, t, 1] float mask of the valid steps of each row."""
  return (jnp.arange(t)[None, :] < lengths_b[:, None])[..., None].astype(jnp.float32)


def conv1d(params: dict, x_btc: jax.Array, *, stride: int = 1, padding: int = 0) -> jax.Array:
  """PyTorch Conv1d (zero padding on both sides); kernel stored [k, c, o]."""
  y_bto = jax.lax.conv_general_dilated(
      x_btc, params["conv_kernel"], window_strides=(stride,), padding=[(padding, padding)],
      dimension_numbers=("NWC", "WIO", "NWC"))
  return y_bto + params["bias"] if "bias" in params else y_bto


def conv_transpose1d(params: dict, x_btc: jax.Array, *, stride: int) -> jax.Array:
  """PyTorch ConvTranspose1d (no padding): output length (t - 1) * stride + k.

  Written as one einsum per tap and a strided overlap-add, which needs no kernel flipping and
  reads directly like the PyTorch definition: out[s*i + j] += x[i] @ W[j].
  """
  b, t, _ = x_btc.shape
  kernel_kco = params["tconv_kernel"]
  k = kernel_kco.shape[0]
  y_btko = jnp.einsum("btc,kco->btko", x_btc, kernel_kco)
  out_bto = jnp.zeros((b, (t - 1) * stride + k, kernel_kco.shape[2]), y_btko.dtype)
  for j in range(k):
    out_bto = out_bto.at[:, j:j + (t - 1) * stride + 1:stride].add(y_btko[:, :, j])
  return out_bto + params["bias"]


def group_norm(params: dict, x_btc: jax.Array, lengths_b: jax.Array,
               eps: float = 1e-5) -> jax.Array:
  """GroupNorm with one group: statistics over all channels and the valid steps of each row."""
  mask_bt1 = valid_mask(lengths_b, x_btc.shape[1])
  count_b11 = jnp.maximum(lengths_b, 1)[:, None, None] * x_btc.shape[2]
  x32 = x_btc.astype(jnp.float32)
  mean_b11 = jnp.sum(x32 * mask_bt1, axis=(1, 2), keepdims=True) / count_b11
  var_b11 = jnp.sum(jnp.square(x32 - mean_b11) * mask_bt1, axis=(1, 2), keepdims=True) / count_b11
  normed = ((x32 - mean_b11) * jax.lax.rsqrt(var_b11 + eps)).astype(x_btc.dtype)
  return normed * params["scale"] + params["bias"]
