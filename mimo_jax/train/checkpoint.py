"""Orbax checkpoints of named pytrees (and a Grain iterator): async, sharded, the last K kept.

Generic over what is saved: any mapping of item name -> pytree of arrays (the LM run saves
`params` and `train`, the codec run its own items) plus, optionally, a Grain iterator whose
position is saved per process. Items restore independently, so a later run can take `params`
alone (phase 2 from phase 1, generation) and leave the optimizer behind.

- Saves are asynchronous: `save` returns once the arrays are copied off the devices; the files
  are written in the background. `wait` blocks until the last save is on disk.
- Each process writes its own shards; every process must call `save` / `restore` with the same
  directory (a shared filesystem or a gs:// path on pods).
- A save is written under a temporary name and renamed (or, on GCS, marked) only when complete,
  so a checkpoint interrupted by a kill is never listed or restored; leftovers are removed when
  the next manager opens the directory.
- Restoring takes abstract arrays (`jax.ShapeDtypeStruct` with a sharding): each leaf is read
  straight into that sharding, which may be on a different mesh than the one that saved it.
  The data iterator's position is per process and cannot move to another process count (each
  process reads its own slice of the records): such a restore is refused up front.
"""

from __future__ import annotations

import logging as pylogging
import re
from typing import Any, Mapping

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

DATA_ITEM = "data"


def quiet_orbax_logs() -> None:
  """Orbax logs every file of every save and restore at INFO; commands keep its warnings and
  errors only."""
  logging.get_absl_handler().addFilter(
      lambda record: "orbax" not in record.pathname or record.levelno >= pylogging.WARNING)


class CheckpointError(RuntimeError):
  """A checkpoint is missing or does not match what is asked of it; the message names it."""


class Checkpointer:
  """One checkpoint directory: `<directory>/<step>/<item>/...`.

  every_steps: `save` without `force` writes only at multiples of it (None: only forced saves).
  keep: how many of the latest checkpoints to keep (older ones are deleted after a save).
  """

  def __init__(self, directory: str, *, every_steps: int | None = None, keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    policies = ocp.checkpoint_managers
    save_policy = (policies.FixedIntervalPolicy(every_steps) if every_steps
                   else policies.SpecificStepsPolicy(()))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_policy,
        preservation_policy=policies.LatestN(keep),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only)
    self.directory = str(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def item_names(self, step: int) -> list[str]:
    """The items saved at `step` (sub-folders of its directory)."""
    step_dir = epath.Path(self.directory) / str(step)
    return sorted(p.name for p in step_dir.iterdir() if p.is_dir() and not p.name.startswith("_"))

  def save(self, step: int, items: Mapping[str, Any],
           data_iterator: grain.DatasetIterator | None = None, force: bool = False) -> bool:
    """Starts an async save of `items` (and the iterator's position) if the interval says so or
    `force`; returns whether a save started."""
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    if data_iterator is not None:
      args[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, abstract_items: Mapping[str, Any], step: int | None = None,
              data_iterator: grain.DatasetIterator | None = None) -> dict[str, Any]:
    """Reads the named items of checkpoint `step` (default: the latest) into the shapes, dtypes
    and shardings of `abstract_items`; moves `data_iterator` to the saved position."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"checkpoint: no complete checkpoint in {self.directory}")
    if step not in self._manager.all_steps():
      raise CheckpointError(f"checkpoint: no step {step} in {self.directory}; it has "
                            f"{self.all_steps()}")
    saved = self.item_names(step)
    wanted = list(abstract_items) + ([DATA_ITEM] if data_iterator is not None else [])
    missing = [name for name in wanted if name not in saved]
    if missing:
      raise CheckpointError(f"checkpoint: step {step} in {self.directory} has no item "
                            f"{missing[0]!r} (it has {saved})")
    if data_iterator is not None:
      self._check_data_processes(step)
    args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_items.items()}
    if data_iterator is not None:
      args[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return {name: restored[name] for name in abstract_items}

  def _check_data_processes(self, step: int) -> None:
    """Grain saves one `process_<i>-of-<n>.json` per process; a position is a place in that
    process's slice of the records, which another process count slices differently."""
    files = [p.name for p in (epath.Path(self.directory) / str(step) / DATA_ITEM).iterdir()]
    counts = {int(m.group(1)) for m in map(re.compile(r"process_\d+-of-(\d+)\.json$").search,
                                           files) if m}
    if counts != {jax.process_count()}:
      raise CheckpointError(
          f"checkpoint: step {step} in {self.directory} holds the data iterator positions of "
          f"{'/'.join(map(str, sorted(counts))) or 'no'} processes; this run has "
          f"{jax.process_count()}. A data position cannot move to another process count: resume "
          f"with {'/'.join(map(str, sorted(counts)))} processes, or start a new run from these "
          f"params with --init_from (the data order starts afresh)")

  def wait(self) -> None:
    """Blocks until every started save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves (arrays or structs) placed by `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def restore_params(directory: str, abstract_params: Any, step: int | None = None,
                   item: str = "params") -> Any:
  """Just the parameters of a checkpoint (latest by default), e.g. to generate or fine-tune."""
  with Checkpointer(directory, read_only=True) as ckpt:
    return ckpt.restore({item: abstract_params}, step)[item]
