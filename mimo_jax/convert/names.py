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

from typing import Any, Mapping

import jax
import numpy as np

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


def _official_shape(shape: tuple[int, ...], perm: tuple[int, ...] | None) -> tuple[int, ...]:
  return tuple(shape) if perm is None else tuple(shape[p] for p in perm)


def _to_torch(array: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
  return array if perm is None else np.transpose(array, perm)


def _from_torch(array: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
  return array if perm is None else np.transpose(array, np.argsort(perm))


def to_official(params: Any) -> dict[str, np.ndarray]:
  """Flat {official name: array} in PyTorch layout."""
  out: dict[str, np.ndarray] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    template, stacked, perm = _template(_keys(path))
    array = np.asarray(leaf)
    pieces = ([(template.format(i), array[i]) for i in range(array.shape[0])] if stacked
              else [(template, array)])
    for name, piece in pieces:
      out[name] = np.ascontiguousarray(_to_torch(piece, perm))
  return out


def official_shapes(specs: Any) -> dict[str, tuple[int, ...]]:
  """Official name -> PyTorch shape of every tensor `specs` describes (nothing is allocated)."""
  shapes = {}
  for path, spec in jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0]:
    template, stacked, perm = _template(_keys(path))
    shape = _official_shape(spec.shape[1:] if stacked else spec.shape, perm)
    names = [template.format(i) for i in range(spec.shape[0])] if stacked else [template]
    shapes.update(dict.fromkeys(names, shape))
  return shapes


def from_official(tensors: Mapping[str, np.ndarray], specs: Any, dtype: Any = None) -> Any:
  """Builds the tree described by `specs` from official tensors (extra tensors are ignored)."""
  missing: list[str] = []

  def load(path: tuple, spec: ParamSpec) -> np.ndarray | None:
    template, stacked, perm = _template(_keys(path))
    shape = spec.shape[1:] if stacked else spec.shape
    names = [template.format(i) for i in range(spec.shape[0])] if stacked else [template]
    pieces = []
    for name in names:
      if name not in tensors:
        missing.append(name)
        continue
      piece = tensors[name]
      expected = _official_shape(shape, perm)
      if tuple(piece.shape) != expected:
        raise ConversionError(f"{name}: shape {tuple(piece.shape)} in the checkpoint, the model "
                              f"expects {expected}")
      pieces.append(_from_torch(piece, perm))
    if len(pieces) != len(names):
      return None
    array = np.stack(pieces) if stacked else pieces[0]
    return array if dtype is None else array.astype(dtype)

  params = jax.tree_util.tree_map_with_path(load, specs, is_leaf=is_spec)
  if missing:
    raise ConversionError(f"{len(missing)} tensor(s) missing from the checkpoint, e.g. "
                          f"{sorted(missing)[:5]}")
  return params
