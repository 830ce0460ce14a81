"""Low-rank adapters on the LLM's projections: W + (alpha / rank) * A @ B, merged for export.

Adapters sit on the backbone's stacked layer kernels named in `targets` (`q_proj`, `k_proj`,
`v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`). For a kernel [l, d_in, d_out] the
adapter is A [l, d_in, r] (random) and B [l, r, d_out] (zeros), so training starts from the base
model exactly. The tree mirrors the params: {"model": {"layers": {"self_attn": {"q_proj":
{"a": A, "b": B}}, ...}}}.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mimo_jax.config import ConfigError
from mimo_jax.convert.names import to_host
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


def merge_kernel(kernel_de: jax.Array, a_dr: jax.Array, b_re: jax.Array, scale: float
                 ) -> jax.Array:
  """W + scale * A @ B in float32, back in W's dtype (any leading layer axes)."""
  delta_de = jnp.einsum("...dr,...re->...de", a_dr.astype(jnp.float32), b_re.astype(jnp.float32))
  return (kernel_de.astype(jnp.float32) + scale * delta_de).astype(kernel_de.dtype)


def _replace_adapted(params: dict, adapters: dict, merged: Callable[..., Any]) -> dict:
  layers = dict(params["model"]["layers"])
  for block, projections in adapters["model"]["layers"].items():
    layers[block] = dict(layers[block])
    for name, ab in projections.items():
      kernel_lde = layers[block][name]["kernel"]
      layers[block][name] = {**layers[block][name], "kernel": merged(kernel_lde, ab["a"], ab["b"])}
  return {**params, "model": {**params["model"], "layers": layers}}


def merge(params: dict, adapters: dict, rank: int, alpha: float) -> dict:
  """params with every adapted kernel replaced by W + (alpha / rank) * A @ B (same dtype as W)."""
  return _replace_adapted(params, adapters,
                          lambda w, a, b: merge_kernel(w, a, b, alpha / rank))


class MergedLayers:
  """A stacked adapted kernel whose layer i is merged only when indexed: an export streams the
  merged model one layer at a time instead of holding a merged copy of every kernel."""

  def __init__(self, kernel_lde: jax.Array, a_ldr: jax.Array, b_lre: jax.Array, scale: float):
    self.shape, self.dtype = kernel_lde.shape, kernel_lde.dtype
    self._kernel, self._a, self._b, self._scale = kernel_lde, a_ldr, b_lre, scale

  def __getitem__(self, layer: int) -> jax.Array:
    # Merged on one device from host copies, so that the exported bytes do not depend on the
    # mesh the run was read onto: a merge compiled for sharded operands can round differently
    # (by 1 ulp on AVX-512 CPUs).
    operands = (to_host(x[layer]) for x in (self._kernel, self._a, self._b))
    return _merge_layer(*operands, self._scale)


_merge_layer = jax.jit(merge_kernel, static_argnums=3)


def merged_view(params: dict, adapters: dict, rank: int, alpha: float) -> dict:
  """params whose adapted kernels are MergedLayers (read per layer, e.g. by
  `convert.names.to_official`); nothing is computed until a layer is read."""
  return _replace_adapted(params, adapters,
                          lambda w, a, b: MergedLayers(w, a, b, alpha / rank))
