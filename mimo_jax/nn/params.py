"""Parameter specs: one declaration gives shapes, logical sharding axes and initial values.

A model describes its parameters as a pytree of `ParamSpec`s; `init_params`, `logical_axes` and
`abstract_params` turn that one tree into the arrays, the sharding annotations and the
ShapeDtypeStructs (for sharded init, checkpoint restore and AOT planning).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

# Initialiser names -> fn(key, shape, dtype). Normal(0.02) is HF's `initializer_range` default.
_INITS: dict[str, Callable[..., jax.Array]] = {
    "normal": lambda key, shape, dtype: 0.02 * jax.random.normal(key, shape, dtype),
    "zeros": lambda key, shape, dtype: jnp.zeros(shape, dtype),
    "ones": lambda key, shape, dtype: jnp.ones(shape, dtype),
}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]  # one logical axis name (or None) per dimension
  init: str = "normal"

  def __post_init__(self):
    if len(self.shape) != len(self.axes):
      raise ValueError(f"ParamSpec shape {self.shape} and axes {self.axes} differ in rank")
    if self.init not in _INITS:
      raise ValueError(f"unknown initialiser {self.init!r}; known: {sorted(_INITS)}")

  def stacked(self, n: int) -> ParamSpec:
    """The same parameter repeated over a leading `layers` axis (for lax.scan)."""
    return ParamSpec((n, *self.shape), ("layers", *self.axes), self.init)


def is_spec(x: Any) -> bool:
  return isinstance(x, ParamSpec)


def stack_specs(specs: Any, n: int) -> Any:
  return jax.tree.map(lambda s: s.stacked(n), specs, is_leaf=is_spec)


def logical_axes(specs: Any) -> Any:
  return jax.tree.map(lambda s: s.axes, specs, is_leaf=is_spec)


def abstract_params(specs: Any, dtype: Any = jnp.float32) -> Any:
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), specs, is_leaf=is_spec)


def init_params(specs: Any, key: jax.Array, dtype: Any = jnp.float32) -> Any:
  """Draws every parameter from its own key (folded in by leaf index, so order is stable)."""
  leaves, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
  arrays = [_INITS[s.init](jax.random.fold_in(key, i), s.shape, dtype)
            for i, s in enumerate(leaves)]
  return jax.tree.unflatten(treedef, arrays)
