"""Building blocks of the tokenizer: its pre-LayerNorm transformer stack, PyTorch-layout convs and a
length-masked GroupNorm.

Axis letters: b batch, t time, d model width, f FFN width, n heads, h head dim, c / o conv input /
output channels, k conv taps, l layers.

Every function takes per-row valid lengths (or masks derived from them) so that a padded batch
gives each row exactly what the official code gives that row alone (batch 1): padding never enters
a convolution, a norm statistic or an attention window.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mimo_jax import sharding
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


def _layer(layer: dict, x_btd: jax.Array, cos_bth, sin_bth, mask_bts, n_heads: int):
  attn = layer["self_attn"]
  b, t, d = x_btd.shape
  h_btd = layer_norm(x_btd, layer["self_attn_layer_norm"]["scale"],
                     layer["self_attn_layer_norm"]["bias"])
  heads = lambda p: dense(p, h_btd).reshape(b, t, n_heads, d // n_heads)
  q_btnh = apply_rope(heads(attn["q_proj"]), cos_bth, sin_bth)
  k_btnh = apply_rope(heads(attn["k_proj"]), cos_bth, sin_bth)
  q_btnh = sharding.constrain(q_btnh, ("batch", "length", "activation_heads", None))
  o_btnh = attend(q_btnh, k_btnh, heads(attn["v_proj"]), mask_bts)
  x_btd = x_btd + dense(attn["out_proj"], o_btnh.reshape(b, t, d))
  h_btd = layer_norm(x_btd, layer["final_layer_norm"]["scale"], layer["final_layer_norm"]["bias"])
  x_btd = x_btd + dense(layer["fc2"], gelu(dense(layer["fc1"], h_btd)))
  return sharding.constrain(x_btd, ("batch", "length", "activation_embed"))


def transformer(layers: dict, x_btd: jax.Array, lengths_b: jax.Array, *, n_heads: int,
                rope_theta: float, causal: bool, window: tuple[int, int],
                skip_layer_id: int | None = None) -> jax.Array:
  """Runs the stacked layers over rows whose first lengths_b[i] steps are valid.

  RoPE positions restart at 0 in every row (the official per-sequence `get_position_ids`).
  `skip_layer_id` = k adds the output of layer k (1-based) to the last layer's output, the
  encoder's skip connection; it is carried through the scan so no per-layer states are stored.
  """
  b, t, d = x_btd.shape
  positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  segment_ids_bt = (positions_bt < lengths_b[:, None]).astype(jnp.int32)  # padding: segment 0
  cos_bth, sin_bth = rope_tables(positions_bt, d // n_heads, rope_theta)
  mask_bts = attention_mask(positions_bt, positions_bt, segment_ids_bt, segment_ids_bt,
                            causal=causal, window=window)
  skip_id = -1 if skip_layer_id is None else skip_layer_id - 1

  def body(carry, xs):
    x_btd, skip_btd = carry
    index, layer = xs
    x_btd = _layer(layer, x_btd, cos_bth, sin_bth, mask_bts, n_heads)
    return (x_btd, jnp.where(index == skip_id, x_btd, skip_btd)), None

  n_layers = jax.tree.leaves(layers)[0].shape[0]
  (x_btd, skip_btd), _ = jax.lax.scan(
      body, (x_btd, jnp.zeros_like(x_btd)), (jnp.arange(n_layers), layers))
  return x_btd + skip_btd


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
