"""Normalisations. Statistics are always taken in float32, whatever the compute dtype."""

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, normed_dtype=None) -> jax.Array:
  """HF Qwen2RMSNorm: normalise in fp32, cast to `normed_dtype` (default: x's), apply the gain.

  A narrower normed_dtype than x's reproduces PyTorch fed a bf16 input with fp32 weights: the
  normalised value is rounded to bf16, the gain product promotes back to fp32.
  """
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  normed = normed if normed_dtype is None else normed.astype(normed_dtype)
  return scale.astype(x.dtype) * normed.astype(x.dtype)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  normed = ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)
  return normed * scale.astype(x.dtype) + bias.astype(x.dtype)
