"""Normalisations. Statistics are always taken in float32, whatever the compute dtype."""

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  # Matches HF Qwen2RMSNorm: normalise in fp32, cast back to the input dtype, then apply the gain.
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return scale.astype(x.dtype) * normed.astype(x.dtype)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  normed = ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)
  return normed * scale.astype(x.dtype) + bias.astype(x.dtype)
