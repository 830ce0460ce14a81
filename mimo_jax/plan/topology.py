"""TPU chips and slices: product names (`v5p-64`) to topology grids, and abstract TPU devices.

A TPU product name counts TensorCores for the megacore generations (v4, v5p: two cores per chip,
exposed to JAX as one device per chip) and chips for the single-core ones (v5e, v6e). The planner
compiles for the abstract devices of the matching grid, which libtpu describes without any TPU
being attached.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import jax
from jax.sharding import Mesh

from mimo_jax import sharding
from mimo_jax.train import metrics

# libtpu takes an exclusive host-wide lock (/tmp/libtpu_lockfile) when it loads, so with another
# JAX process on the host holding it, topologies cannot be described. Compiling for abstract
# devices touches no TPU, so sharing is safe; libtpu reads this when it loads.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


class PlanError(ValueError):
  """A bad planner input (topology, mesh, config) or a missing libtpu; the message says which."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip facts of one TPU generation (public Cloud TPU system-architecture pages)."""

  generation: str
  device_kind: str  # jax's device_kind of its devices
  hbm_bytes: float  # HBM that XLA lets one device use (its own RESOURCE_EXHAUSTED limit)
  hbm_bytes_per_s: float  # HBM bandwidth of the chip
  cores_per_chip: int  # TensorCores counted by the product name
  grid_rank: int  # 3 for the 3D-torus generations, 2 for the 2D ones
  chip_config_name: str | None  # libtpu's name for how cores form a device

  @property
  def peak_bf16_flops(self) -> float:
    """Dense bf16 FLOP/s of the chip: the training job's MFU table, so plans and runs agree."""
    return metrics.peak_flops(self.device_kind)

GIB = 2.0**30

# HBM figures are the per-device capacities libtpu reports when a compile runs out of memory
# (slightly below the marketing 32/16/95/32 GiB: the runtime keeps a reserve).
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "TPU v4", 30.75 * GIB, 1200e9, 2, 3, "megacore"),
    "v5e": Chip("v5e", "TPU v5 lite", 15.75 * GIB, 819e9, 1, 2, None),
    "v5p": Chip("v5p", "TPU v5", 95.74 * GIB, 2765e9, 2, 3, None),
    "v6e": Chip("v6e", "TPU v6 lite", 31.25 * GIB, 1640e9, 1, 2, None),
}
_SLICE_NAME = re.compile(r"^(v4|v5e|v5p|v6e)-(\d+)$")
_GRID_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Topology:
  """One TPU slice type, repeated `num_slices` times (multi-slice over the data-centre network)."""

  name: str  # as the user wrote it
  chip: Chip
  grid: tuple[int, ...]  # chips along each torus axis
  num_slices: int = 1

  @property
  def topology_name(self) -> str:
    return f"{self.chip.generation}:{'x'.join(map(str, self.grid))}"

  @property
  def chips_per_slice(self) -> int:
    return math.prod(self.grid)

  @property
  def num_chips(self) -> int:
    return self.chips_per_slice * self.num_slices


def _grid(chips: int, rank: int) -> tuple[int, ...]:
  """The most cubic power-of-two grid with `chips` chips, smallest axes first (2x4x4, 8x16);
  4 chips of a 3D generation are the 2x2x1 host slice."""
  if chips < 4 or chips & (chips - 1):
    raise PlanError(f"--topology: {chips} chips is not a power of two of at least 4")
  if rank == 3 and chips == 4:
    return (2, 2, 1)
  exponent = int(math.log2(chips))
  exponents = [exponent // rank + (1 if i >= rank - exponent % rank else 0) for i in range(rank)]
  return tuple(2**e for e in exponents)


def parse_topology(name: str, num_slices: int = 1) -> Topology:
  """`v5p-64` (product name) or `v5p:2x4x4` (grid) -> Topology."""
  if num_slices < 1:
    raise PlanError(f"--num_slices: must be >= 1, got {num_slices}")
  if match := _SLICE_NAME.match(name):
    chip = CHIPS[match.group(1)]
    cores = int(match.group(2))
    if cores % chip.cores_per_chip:
      raise PlanError(f"--topology={name}: {chip.generation} names count {chip.cores_per_chip} "
                      f"cores per chip; {cores} is not a multiple")
    grid = _grid(cores // chip.cores_per_chip, chip.grid_rank)
  elif match := _GRID_NAME.match(name):
    chip = CHIPS[match.group(1)]
    grid = tuple(int(n) for n in match.group(2).split("x"))
    if len(grid) != chip.grid_rank:
      raise PlanError(f"--topology={name}: {chip.generation} grids have {chip.grid_rank} axes")
  else:
    raise PlanError(f"--topology={name!r}: expected a product name such as v5p-64, v5e-256, "
                    f"v4-128, v6e-256 or a grid such as v5p:2x4x4 (generations: {sorted(CHIPS)})")
  return Topology(name, chip, grid, num_slices)


def libtpu_missing_message() -> str:
  return (f"libtpu is not installed, so TPU programs cannot be compiled on this host. Install the "
          f"libtpu that matches jax {jax.__version__}: pip install 'jax[tpu]=={jax.__version__}' "
          f"(no TPU is needed; the planner compiles for abstract TPU devices)")


def abstract_devices(topo: Topology) -> list:
  """The abstract TPU devices of the topology (all slices), from libtpu."""
  if importlib.util.find_spec("libtpu") is None:
    raise PlanError(libtpu_missing_message())
  from jax.experimental import topologies  # imported late: it needs no TPU, but libtpu to run
  kwargs = {"num_slices": topo.num_slices}
  if topo.chip.chip_config_name:
    kwargs["chip_config_name"] = topo.chip.chip_config_name
  try:
    desc = topologies.get_topology_desc(topology_name=topo.topology_name, platform="tpu",
                                        **kwargs)
  except Exception as e:  # libtpu reports unknown grids as a generic runtime error
    raise PlanError(f"--topology={topo.name}: libtpu rejects {topo.topology_name}: {e}") from None
  return list(desc.devices)


def topology_mesh(topo: Topology, mesh_flag: str) -> Mesh:
  """The training job's mesh (`sharding.make_mesh`) over the topology's abstract devices: with
  several slices the `data` axis spans them (dcn) and the flag's axes tile each slice."""
  try:
    return sharding.make_mesh(mesh_flag, devices=abstract_devices(topo))
  except NotImplementedError as e:  # jax.make_mesh's "cannot lay this out on the torus"
    raise PlanError(f"--mesh={mesh_flag}: cannot be laid out on the {topo.topology_name} "
                    f"torus (the training job's mesh would fail the same way): each mesh axis "
                    f"must be a product of whole torus axes {topo.grid}. ({e})") from None
