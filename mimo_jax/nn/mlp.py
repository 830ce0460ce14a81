"""Feed-forward blocks."""

import jax
import jax.numpy as jnp

from mimo_jax.nn.params import ParamSpec


def swiglu_specs(d_model: int, d_ff: int) -> dict:
  return {
      "gate_proj": {"kernel": ParamSpec((d_model, d_ff), ("embed", "mlp"))},
      "up_proj": {"kernel": ParamSpec((d_model, d_ff), ("embed", "mlp"))},
      "down_proj": {"kernel": ParamSpec((d_ff, d_model), ("mlp", "embed"))},
  }


def swiglu(params: dict, x_btd: jax.Array) -> jax.Array:
  gate_btf = jnp.einsum("btd,df->btf", x_btd, params["gate_proj"]["kernel"])
  up_btf = jnp.einsum("btd,df->btf", x_btd, params["up_proj"]["kernel"])
  return jnp.einsum("btf,fd->btd", jax.nn.silu(gate_btf) * up_btf, params["down_proj"]["kernel"])
