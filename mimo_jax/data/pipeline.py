"""The training input pipeline (Grain): shards -> task templates -> packing -> global batches.

  records of this host   MapDataset over the shards' records, rows process_index::process_count
  shuffled per epoch     seeded; each epoch reshuffles (shuffle before repeat)
  decoded, templated     `example_fn(record, rng)` -> {"input_ids", "loss_mask"} or None (skip)
  packed                 `packing.PackIterDataset`: sequences of P positions, whole examples
  batched                [per-host batch, ...] numpy; optionally prefetched by worker processes
  global                 `TrainIterator`: jax.Arrays over the mesh's batch axes
                         (`jax.make_array_from_process_local_data`)

Every random choice derives from `seed` and the record's place in the stream (Grain's
`random_map`), so the same seed gives the same batches, and the iterator state
(`get_state`/`set_state`, or Orbax through `grain.checkpoint.CheckpointSave(iterator.grain)`)
resumes exactly. Hosts read disjoint records that together cover each epoch. Packing and
templating run inside the workers, so the stream depends on `worker_count`: keep it fixed across a
save and its restore.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mimo_jax import sharding
from mimo_jax.data import packing, pretokenize
from mimo_jax.lm import layout as layout_lib

# A template: (decoded shard record, numpy Generator) -> example dict, or None to skip it.
ExampleFn = Callable[[dict, np.random.Generator], dict | None]

BATCH_AXES = {"input_ids": ("batch", None, None), "segment_ids": ("batch", None),
              "positions": ("batch", None), "loss_mask": ("batch", None)}


class _Examples(grain.transforms.RandomMap):
  """Decodes a shard record and applies the template (picklable for worker processes)."""

  def __init__(self, example_fn: ExampleFn):
    self._example_fn = example_fn

  def random_map(self, data: bytes, rng: np.random.Generator):
    return self._example_fn(pretokenize.deserialize(data), rng)


def make_dataset(shard_paths: Sequence[str], example_fn: ExampleFn, packer: packing.Packer, *,
                 batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                 num_epochs: int | None = None, shuffle: bool = True, pack_window: int = 64,
                 worker_count: int = 0, worker_buffer_size: int = 2) -> grain.IterDataset:
  """This host's stream of packed batches: dicts of numpy arrays with a leading `batch_size`
  axis (`input_ids` [b, 1 + C, G * P], `segment_ids` / `positions` / `loss_mask` [b, P]).

  `num_epochs=None` repeats forever (training); a finite count ends the stream, and the last
  incomplete batch is dropped.
  """
  if not shard_paths:
    raise ValueError("make_dataset: no shard paths given (did pre-tokenisation write any?)")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  source = grain.sources.ArrayRecordDataSource(list(shard_paths))
  ds = grain.MapDataset.source(source)[process_index::process_count].seed(seed)
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs).random_map(_Examples(example_fn)).filter(lambda x: x is not None)
  it = packing.PackIterDataset(ds.to_iter_dataset(), packer, pack_window)
  it = it.batch(batch_size, drop_remainder=True)
  if worker_count > 0:
    it = it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return it


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
  """Each batch field's sharding: the batch axis over the mesh's batch axes (RULES), the rest
  replicated."""
  return {k: NamedSharding(mesh, sharding.logical_to_spec(axes)) for k, axes in BATCH_AXES.items()}


class TrainIterator:
  """Global batches as jax.Arrays from this host's Grain iterator.

  `grain` is the underlying `grain.DatasetIterator`: checkpoint it with Orbax
  (`grain.checkpoint.CheckpointSave(it.grain)` / `CheckpointRestore(it.grain)`) or through
  `get_state` / `set_state`.
  """

  def __init__(self, dataset: grain.IterDataset, shardings: dict[str, NamedSharding]):
    self.grain = iter(dataset)
    self.shardings = shardings

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self.grain)
    return {k: jax.make_array_from_process_local_data(self.shardings[k], v)
            for k, v in local.items()}

  def get_state(self) -> dict:
    return self.grain.get_state()

  def set_state(self, state: dict) -> None:
    self.grain.set_state(state)


def make_train_iterator(shard_paths: Sequence[str], example_fn: ExampleFn,
                        layout: layout_lib.Layout, seq_positions: int, global_batch: int,
                        seed: int, mesh: Mesh, *, split_long: bool = False,
                        num_epochs: int | None = None, pack_window: int = 64,
                        worker_count: int = 0) -> TrainIterator:
  """The training iterator: global batches of `global_batch` packed sequences of
  `seq_positions` positions, sharded over `mesh`'s batch axes; each host (jax.process_index())
  reads its share and builds global_batch / process_count rows."""
  count = jax.process_count()
  if global_batch % count:
    raise ValueError(f"global_batch {global_batch} is not divisible by the {count} processes")
  packer = packing.Packer(seq_positions, layout, split_long)
  dataset = make_dataset(shard_paths, example_fn, packer, batch_size=global_batch // count,
                         seed=seed, process_index=jax.process_index(), process_count=count,
                         num_epochs=num_epochs, pack_window=pack_window,
                         worker_count=worker_count)
  return TrainIterator(dataset, batch_shardings(mesh))
