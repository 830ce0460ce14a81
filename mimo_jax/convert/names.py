"""Our parameter tree <-> official PyTorch tensor names, derived from the tree's own structure.

Our trees mirror the official module paths (`model.layers.N.self_attn.q_proj`), so one rule maps
every leaf: the path is joined with dots, a `layers` subtree (stacked on a leading axis for scan)
expands into `layers.0`, `layers.1`, ..., list entries become their index, and the leaf name says
the layout:

  kernel        -> weight, transposed (ours [in, out], PyTorch Linear [out, in])
  scale         -> weight (norm gains)
  embedding     -> weight (embedding tables)
  bias          -> bias
  conv_kernel   -> weight (ours [k, in, out], PyTorch Conv1d [out, in, k])
  tconv_kernel  -> weight (ours [k, in, out], PyTorch ConvTranspose1d [in, out, k])
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mimo_jax import sharding
from mimo_jax.convert.safetensors_io import LazyTensor
from mimo_jax.nn.params import ParamSpec, is_spec

# Leaf name -> (official name, axis permutation from our layout to PyTorch's, or None).
_LEAVES = {"kernel": ("weight", (1, 0)), "scale": ("weight", None),
           "embedding": ("weight", None), "bias": ("bias", None),
           "conv_kernel": ("weight", (2, 1, 0)), "tconv_kernel": ("weight", (1, 2, 0))}


class ConversionError(ValueError):
  """A checkpoint does not match the model: the message names the tensors."""


def _keys(path: tuple) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _template(keys: tuple[str, ...]) -> tuple[str, bool, tuple[int, ...] | None]:
  """('model', 'layers', 'mlp', 'up_proj', 'kernel') -> ('model.layers.{}.mlp.up_proj.weight',
  stacked, permutation to the PyTorch layout)."""
  *modules, leaf = keys
  if leaf not in _LEAVES:
    raise ConversionError(f"{'/'.join(keys)}: no official layout for leaf {leaf!r}")
  name, perm = _LEAVES[leaf]
  stacked = "layers" in modules
  parts = ["layers.{}" if m == "layers" else m for m in modules]
  return ".".join([*parts, name]), stacked, perm


def _names(template: str, stacked: bool, shape: tuple[int, ...]) -> list[str]:
  return [template.format(i) for i in range(shape[0])] if stacked else [template]


def _official_shape(shape: tuple[int, ...], perm: tuple[int, ...] | None) -> tuple[int, ...]:
  return tuple(shape) if perm is None else tuple(shape[p] for p in perm)


def _to_torch(array: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
  return array if perm is None else np.transpose(array, perm)


def _from_torch(array: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
  return array if perm is None else np.transpose(array, np.argsort(perm))


def to_host(x: Any) -> np.ndarray:
  """x as a host array. A global array spread over processes is gathered first: a collective,
  so every process reads the same tensors in the same order."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _read(leaf: Any, layer: int | None, perm: tuple[int, ...] | None) -> np.ndarray:
  # Only this tensor (one layer of a stacked leaf) comes to the host; the transpose is a view
  # that the safetensors writer copies out in small cast blocks.
  return _to_torch(to_host(leaf if layer is None else leaf[layer]), perm)


def to_official(params: Any) -> dict[str, LazyTensor]:
  """Flat {official name: LazyTensor in PyTorch layout}, nothing read until a tensor is asked
  for. Leaves may be arrays, anything with `.shape` and per-layer indexing (e.g. LoRA's merged
  view), or ParamSpecs (for names and shapes alone)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_spec)[0]:
    template, stacked, perm = _template(_keys(path))
    shape = _official_shape(leaf.shape[1:] if stacked else leaf.shape, perm)
    for i, name in enumerate(_names(template, stacked, leaf.shape)):
      out[name] = LazyTensor(shape, functools.partial(_read, leaf, i if stacked else None, perm))
  return out


def official_shapes(specs: Any) -> dict[str, tuple[int, ...]]:
  """Official name -> PyTorch shape of every tensor `specs` describes (nothing is allocated)."""
  return {name: t.shape for name, t in to_official(specs).items()}


def from_official(tensors: Mapping[str, np.ndarray], specs: Any, dtype: Any = None,
                  mesh: jax.sharding.Mesh | None = None) -> Any:
  """Builds the tree `specs` describes from official tensors (extra tensors are ignored), as
  arrays sharded over `mesh` by their logical axes (default: the first device), in `dtype`
  (default: the checkpoint's).

  Each leaf is built in place on its devices, one official tensor at a time, so the host holds
  a single tensor beyond the params being built, whatever the size of a stacked leaf.
  """
  mesh = mesh or sharding.make_mesh("data:1,fsdp:1,tensor:1", devices=jax.devices()[:1])
  flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0]
  missing = [name for path, spec in flat for name in _names(*_template(_keys(path))[:2],
                                                            spec.shape) if name not in tensors]
  if missing:
    raise ConversionError(f"{len(missing)} tensor(s) missing from the checkpoint, e.g. "
                          f"{sorted(missing)[:5]}")

  def load(path: tuple, spec: ParamSpec) -> jax.Array:
    template, stacked, perm = _template(_keys(path))
    expected = _official_shape(spec.shape[1:] if stacked else spec.shape, perm)
    target = sharding.named_shardings(spec.axes, mesh)

    def piece(name: str) -> np.ndarray:
      array = tensors[name]
      if tuple(array.shape) != expected:
        raise ConversionError(f"{name}: shape {tuple(array.shape)} in the checkpoint, the model "
                              f"expects {expected}")
      array = _from_torch(np.asarray(array), perm)
      return array if dtype is None else array.astype(dtype)

    names = _names(template, stacked, spec.shape)
    if not stacked:
      return sharding.shard_params(piece(names[0]), spec.axes, mesh)
    out = None
    for i, name in enumerate(names):
      layer = piece(name)
      if out is None:
        out = jnp.zeros(spec.shape, layer.dtype, device=target)
      out = _layer_setter(target)(out, layer, i)
    return out

  return jax.tree_util.tree_map_with_path(load, specs, is_leaf=is_spec)


@functools.lru_cache(maxsize=None)
def _layer_setter(target: jax.sharding.Sharding):
  # Donated: the stacked leaf is updated in place, never copied. One compilation per sharding
  # and leaf shape.
  return jax.jit(lambda stacked, layer, i: jax.lax.dynamic_update_index_in_dim(
      stacked, layer.astype(stacked.dtype), i, 0), out_shardings=target, donate_argnums=0)
