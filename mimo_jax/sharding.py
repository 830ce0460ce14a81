"""Device meshes and logical-axis sharding.

Code names the role of each array dimension (`embed`, `heads`, `batch`, ...); one rules table maps
those logical axes to mesh axes. The same model code then runs on one CPU, on fake CPU devices,
on a GPU and on a TPU pod; only the mesh flag changes.

Mesh axes: `data` (pure data parallel: replicated params), `fsdp` (data parallel with params,
grads and optimizer state sharded), `tensor` (Megatron-style sharding of heads / FFN / vocab).

Multi-slice (several TPU slices joined by the data-centre network, DCN): the flag's `dcn:N` is
data parallelism between the N slices, and the flag's other sizes tile each slice. As in MaxText
(`dcn_data_parallelism`), `dcn` is not an axis of its own: the mesh's `data` axis is dcn x data,
slice-major, so the rules and every batch computation stay the same; only the gradient
all-reduce crosses the slow network.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mimo_jax.nn.params import init_params, logical_axes

MESH_AXES = ("data", "fsdp", "tensor")
FLAG_AXES = ("dcn", *MESH_AXES)  # --mesh items: `dcn` multiplies `data` (module doc)

# Logical axis -> mesh axis (or axes, or None = replicated). Parameter axes come first; the
# `activation_*` axes keep activations replicated over fsdp (FSDP shards weights, not features).
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("audio_vocab", None),  # 129 / 1025 entries: too small and too odd to split
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


class MeshError(ValueError):
  """A bad --mesh flag; the message quotes it."""


def parse_mesh(flag: str, n_devices: int, n_slices: int = 1) -> dict[str, int]:
  """'data:1,fsdp:-1,tensor:1' -> {'dcn': 1, 'data': 1, 'fsdp': n, 'tensor': 1}: the sizes of
  the mesh axes within one slice, and `dcn`, the number of slices (its default); one -1 takes
  the rest of a slice."""
  sizes: dict[str, int] = {}
  for item in flag.split(","):
    name, sep, size = item.strip().partition(":")
    if not sep or name not in FLAG_AXES:
      raise MeshError(f"--mesh={flag!r}: expected comma-separated axis:size with axes from "
                      f"{FLAG_AXES}, got {item!r}")
    if name in sizes:
      raise MeshError(f"--mesh={flag!r}: axis {name!r} given twice")
    try:
      sizes[name] = int(size)
    except ValueError:
      raise MeshError(f"--mesh={flag!r}: size of {name!r} is not an integer: {size!r}") from None
    if sizes[name] == 0 or sizes[name] < -1:
      raise MeshError(f"--mesh={flag!r}: size of {name!r} must be positive or -1")
  dcn = sizes.pop("dcn", n_slices)
  if dcn != n_slices:
    raise MeshError(f"--mesh={flag!r}: dcn:{dcn} but the devices form {n_slices} slice(s); dcn "
                    f"is the data parallelism between slices and must equal their number")
  per_slice = n_devices // n_slices
  fill = [name for name, size in sizes.items() if size == -1]
  if len(fill) > 1:
    raise MeshError(f"--mesh={flag!r}: only one axis may be -1, got {fill}")
  known = math.prod(size for size in sizes.values() if size != -1)
  where = f"{per_slice} devices" + (" per slice" if n_slices > 1 else "")
  if fill:
    if per_slice % known:
      raise MeshError(f"--mesh={flag!r}: {where} do not divide by {known}")
    sizes[fill[0]] = per_slice // known
  elif known != per_slice:
    raise MeshError(f"--mesh={flag!r}: axes multiply to {known} but there are {where}")
  return {"dcn": dcn, **{name: sizes.get(name, 1) for name in MESH_AXES}}


# Device kinds whose torus jax.make_mesh lets a mesh axis split (jax's mesh_utils: v5e).
_SPLITTABLE_TORUS_KINDS = ("TPU v5 lite", "TPU v5e")


def num_slices(devices: Sequence[jax.Device]) -> int:
  """TPU slices the devices span (devices of other platforms have no slice: one)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(flag: str = "data:1,fsdp:-1,tensor:1",
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all (global, multi-process) devices with Auto axes for logical-rule sharding;
  over several slices, a hybrid mesh whose `data` axis crosses the slices."""
  devices = list(jax.devices() if devices is None else devices)
  slices = num_slices(devices)
  sizes = parse_mesh(flag, len(devices), slices)
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if slices == 1:
    return jax.make_mesh(tuple(sizes[name] for name in MESH_AXES), MESH_AXES,
                         axis_types=axis_types, devices=devices)
  # jax.make_mesh lays out one slice's torus; across slices the devices are grouped by
  # slice_index, each slice tiled by the flag's sizes, slices stacked along `data`.
  ici = [sizes[name] for name in MESH_AXES]
  dcn = [sizes["dcn"] if name == "data" else 1 for name in MESH_AXES]
  # As jax.make_mesh lays out one slice: a v5e axis may split a torus axis (fsdp:32,tensor:8 on
  # 16x16), which the 2D v5e torus allows and the hybrid mesh refuses by default.
  split = devices[0].device_kind in _SPLITTABLE_TORUS_KINDS
  return Mesh(mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                   allow_split_physical_axes=split),
              MESH_AXES, axis_types=axis_types)


def logical_to_spec(axes: Sequence[str | None]) -> PartitionSpec:
  return nn.logical_to_mesh_axes(tuple(axes), RULES)


def _is_axes(x: Any) -> bool:
  return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def named_shardings(axes_tree: Any, mesh: Mesh) -> Any:
  """Logical axes per leaf -> NamedSharding per leaf."""
  return jax.tree.map(lambda axes: NamedSharding(mesh, logical_to_spec(axes)), axes_tree,
                      is_leaf=_is_axes)


def shard_params(params: Any, axes_tree: Any, mesh: Mesh) -> Any:
  """Places host or single-device params onto the mesh (every process passes the full values)."""
  shardings = named_shardings(axes_tree, mesh)
  return jax.tree.map(_put_global, params, shardings)


def _put_global(x: Any, target: NamedSharding) -> jax.Array:
  # device_put cannot send one process's arrays to another's devices; build each process's
  # addressable shards from the full value instead (works single-process too).
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, target, lambda index: x[index])


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical axes; a no-op outside a mesh (`with jax.set_mesh(m)`)."""
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes))


def init_sharded(specs: Any, key: jax.Array, mesh: Mesh, dtype: Any = np.float32) -> Any:
  """Initialises parameters directly in their shards: no host ever holds the whole model."""
  shardings = named_shardings(logical_axes(specs), mesh)
  return jax.jit(lambda k: init_params(specs, k, dtype), out_shardings=shardings)(key)
