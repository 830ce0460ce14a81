"""Low-rank adapters on the LLM's projections: W + (alpha / rank) * A @ B, merged for export.

Adapters sit on the backbone's stacked layer kernels named in `targets` (`q_proj`, `k_proj`,
`v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`). For a kernel [l, d_in, d_out] the
adapter is A [l, d_in, r] (random) and B [l, r, d_out] (zeros), so training starts from the base
model exactly. The tree mirrors the params: {"model": {"layers": {"self_attn": {"q_proj":
{"a": A, "b": B}}, ...}}}.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from mimo_jax.config import ConfigError
from mimo_jax.nn.params import ParamSpec

_PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
                "mlp": ("gate_proj", "up_proj", "down_proj")}


def specs(model_specs: dict, rank: int, targets: tuple[str, ...]) -> dict:
  """ParamSpecs of the adapters for `targets` on the backbone layers of `model_specs`."""
  known = {name for names in _PROJECTIONS.values() for name in names}
  unknown = sorted(set(targets) - known)
  if unknown:
    raise ConfigError(f"config.train.lora.targets: unknown projection {unknown[0]!r}; known: "
                      f"{sorted(known)}")
  if not targets:
    raise ConfigError("config.train.lora.targets: empty; name at least one projection")
  layers = model_specs["model"]["layers"]
  out: dict[str, Any] = {}
  for block, names in _PROJECTIONS.items():
    for name in names:
      if name not in targets:
        continue
      kernel: ParamSpec = layers[block][name]["kernel"]
      n_layers, d_in, d_out = kernel.shape
      layer_axis, in_axis, out_axis = kernel.axes
      out.setdefault(block, {})[name] = {
          "a": ParamSpec((n_layers, d_in, rank), (layer_axis, in_axis, None), "normal"),
          "b": ParamSpec((n_layers, rank, d_out), (layer_axis, None, out_axis), "zeros"),
      }
  return {"model": {"layers": out}}


def merge(params: dict, adapters: dict, rank: int, alpha: float) -> dict:
  """params with every adapted kernel replaced by W + (alpha / rank) * A @ B (same dtype as W)."""
  scale = alpha / rank
  layers = dict(params["model"]["layers"])
  for block, projections in adapters["model"]["layers"].items():
    layers[block] = dict(layers[block])
    for name, ab in projections.items():
      kernel_lde = layers[block][name]["kernel"]
      delta_lde = jnp.einsum("ldr,lre->lde", ab["a"].astype(jnp.float32),
                             ab["b"].astype(jnp.float32))
      merged = (kernel_lde.astype(jnp.float32) + scale * delta_lde).astype(kernel_lde.dtype)
      layers[block][name] = {**layers[block][name], "kernel": merged}
  return {**params, "model": {**params["model"], "layers": layers}}
