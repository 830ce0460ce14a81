"""Rotary position embedding in the HF "rotate half" layout.

HF (and the official MiMo-Audio code) rotate the pair (x[i], x[i + d/2]) rather than interleaved
pairs, so checkpoints convert without permuting q/k weights.
"""

import jax
import jax.numpy as jnp


def rope_tables(positions_bt: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos and sin tables [b, t, head_dim] in float32, as HF computes them."""
  inv_freq_k = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_btk = positions_bt.astype(jnp.float32)[..., None] * inv_freq_k
  angles_bth = jnp.concatenate([angles_btk, angles_btk], axis=-1)
  return jnp.cos(angles_bth), jnp.sin(angles_bth)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
  half = x_btnh.shape[-1] // 2
  rotated_btnh = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
  # HF casts the tables to the activation dtype before rotating; do the same for bf16 parity.
  cos_bt1h = cos_bth[:, :, None, :].astype(x_btnh.dtype)
  sin_bt1h = sin_bth[:, :, None, :].astype(x_btnh.dtype)
  return x_btnh * cos_bt1h + rotated_btnh * sin_bt1h
