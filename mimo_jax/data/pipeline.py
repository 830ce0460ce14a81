"""The training input pipeline (Grain): shards -> task templates -> packing -> global batches.

  records of this host   MapDataset over the shards' records, rows process_index::process_count
  shuffled per epoch     seeded; each epoch reshuffles (shuffle before repeat)
  mixed (optional)       several corpora, each sliced, shuffled and repeated alone, mixed by
                         weight (`grain.MapDataset.mix`)
  decoded, templated     `example_fn(record, index)` -> {"input_ids", "loss_mask"}, or
                         {"skip": reason} (counted by the packer; `PhaseExamples` is the
                         phase's task mixture of `templates`); a record that cannot be
                         decoded is skipped as `record_unreadable`
  packed                 `packing.PackIterDataset`: sequences of P positions, whole examples;
                         too much skipped raises `packing.SkipError` (`packing.SkipLimits`)
  batched                [per-host batch, ...] numpy; optionally prefetched by worker processes
  global                 `TrainIterator`: jax.Arrays over the mesh's batch axes
                         (`jax.make_array_from_process_local_data`)

Every random choice derives from `seed` and the record's index in this host's stream, so the same
seed gives the same batches, and the iterator state (`get_state` / `set_state`, or Orbax through
`grain.checkpoint.CheckpointSave(iterator.grain)`) resumes exactly. Hosts read disjoint records
that together cover each epoch. Packing and templating run inside the workers, so the stream
depends on `worker_count`: keep it fixed across a save and its restore.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import grain
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding

from mimo_jax import sharding
from mimo_jax.data import packing, pretokenize, templates
from mimo_jax.lm.layout import LayoutError

# (decoded shard record, index in the host's stream) -> example dict or {"skip": reason}.
ExampleFn = Callable[[dict, int], dict]

RECORD_UNREADABLE = "record_unreadable"

BATCH_AXES = {"input_ids": ("batch", None, None), "segment_ids": ("batch", None),
              "positions": ("batch", None), "loss_mask": ("batch", None)}


class PhaseExamples:
  """The training phase's task mixture over shard records (`templates.example_for`): the task and
  its random choices come from (seed, index); a record without a caption draws no captioning.
  A record whose `task` field names a template (from the manifest) always gets that task; an SFT
  conversation (a record with `messages`) is rendered whole by `templates.conversation`. A record
  the task cannot use (e.g. an empty transcript for ASR) becomes the skip marker
  `template_failed:<task>`; the first failure of each task is logged with its message (per
  process), the rest are counted."""

  def __init__(self, fmt: templates.Formatter, phase: str, seed: int,
               mixtures=templates.PHASE_MIXTURES):
    if phase not in mixtures:
      raise ValueError(f"phase {phase!r}: expected one of {sorted(mixtures)}")
    self.fmt, self.phase, self.seed, self.mixtures = fmt, phase, seed, mixtures
    self._logged: set[str] = set()

  def __call__(self, record: dict, index: int) -> dict:
    rng = np.random.default_rng([self.seed, index])  # as templates.example_for draws
    try:
      if "messages" in record:
        task = record.get("task") or "chat"
        example = templates.conversation(self.fmt, task, conversation_turns(record["messages"]))
      else:
        utt = templates.Utterance(record["text"], record["codes"].astype(np.int32),
                                  record.get("speaker", ""), record.get("language", ""),
                                  record.get("caption", ""))
        task = record.get("task") or templates.sample_task(self.phase, rng, self.mixtures, utt)
        example = templates.render(self.fmt, task, utt, rng)
    except (templates.TemplateError, LayoutError) as e:
      reason = f"template_failed:{task}"
      if reason not in self._logged:
        self._logged.add(reason)
        logging.warning("record %r: %s: %s (further %s skips are counted, not logged)",
                        record.get("key"), reason, e, reason)
      return {"skip": reason}
    return {"input_ids": example.ids_kl, "loss_mask": example.loss_mask_p}


def conversation_turns(messages: list[dict]) -> list[templates.Turn]:
  """A shard record's `messages` (`pretokenize`) as template turns: a part with codes is input
  audio, or with text too a spoken reply; a part without codes is text."""
  turns = []
  for message in messages:
    parts = []
    for part in message["parts"]:
      if "codes" not in part:
        parts.append(part["text"])
        continue
      codes_tc = part["codes"].astype(np.int32)
      parts.append(templates.Speech(part["text"], codes_tc) if part["text"] else codes_tc)
    turns.append(templates.Turn(message["role"], tuple(parts), bool(message["thinking"])))
  return turns


class _Examples(grain.transforms.MapWithIndex):
  """Decodes a shard record and applies the template (picklable for worker processes)."""

  def __init__(self, example_fn: ExampleFn):
    self._example_fn = example_fn

  def map_with_index(self, index: int, data: bytes) -> dict:
    try:
      record = pretokenize.deserialize(data)
    except Exception as e:  # pylint: disable=broad-except  (msgpack raises many types)
      logging.warning("record %d of this host's stream: %s: %s: %s", index, RECORD_UNREADABLE,
                      type(e).__name__, e)
      return {"skip": RECORD_UNREADABLE}
    return self._example_fn(record, index)


def _host_records(paths: Sequence[str], seed: int, process_index: int, process_count: int,
                  shuffle: bool, num_epochs: int | None) -> grain.MapDataset:
  if not paths:
    raise ValueError("make_dataset: no shard paths given (did pre-tokenisation write any?)")
  source = grain.sources.ArrayRecordDataSource(list(paths))
  if len(source) < process_count:  # an empty share would end (or, repeated, stall) the stream
    raise ValueError(f"make_dataset: the shards hold {len(source)} records, fewer than the "
                     f"{process_count} processes that share them ({paths[0]}, ...)")
  ds = grain.MapDataset.source(source)[process_index::process_count].seed(seed)
  return (ds.shuffle() if shuffle else ds).repeat(num_epochs)


Sources = Sequence[str] | Mapping[str, tuple[Sequence[str], float]]


def make_dataset(shard_paths: Sources, example_fn: ExampleFn, packer: packing.Packer, *,
                 batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                 num_epochs: int | None = None, shuffle: bool = True,
                 pack_window_sequences: int = 8, worker_count: int = 0,
                 worker_buffer_size: int = 2, read_options: grain.ReadOptions | None = None,
                 skip_limits: packing.SkipLimits = packing.SkipLimits()) -> grain.IterDataset:
  """This host's stream of packed batches: dicts of numpy arrays with a leading `batch_size`
  axis (`input_ids` [b, 1 + C, G * P], `segment_ids` / `positions` / `loss_mask` [b, P]).

  `shard_paths`: the shard files of one corpus, or {name: (shard files, weight)} to mix several
  (each repeats forever; the mixture draws records in proportion to the weights).
  `num_epochs=None` repeats forever (training); a finite count ends the stream, and the last
  incomplete batch is dropped. `read_options`: Grain's record-prefetching threads; by default
  none for local shards (Python templating holds the GIL, so threads only add overhead: several
  times the throughput on this CPU, experiments/results/data_pipeline.md) and Grain's default
  (16 threads) when any shard is remote, where they hide the read latency.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if isinstance(shard_paths, Mapping):
    if num_epochs is not None:
      raise ValueError("make_dataset: a mixture of corpora repeats forever; use num_epochs=None")
    if not shard_paths or any(w <= 0 for _, w in shard_paths.values()):
      raise ValueError(f"make_dataset: mixture weights must be positive, got "
                       f"{ {k: w for k, (_, w) in shard_paths.items()} }")
    names = sorted(shard_paths)
    parts = [_host_records(shard_paths[name][0], _derived_seed(seed, i), process_index,
                           process_count, shuffle, None) for i, name in enumerate(names)]
    ds = grain.MapDataset.mix(parts, [shard_paths[name][1] for name in names])
  else:
    ds = _host_records(shard_paths, seed, process_index, process_count, shuffle, num_epochs)
  ds = ds.map_with_index(_Examples(example_fn))
  if read_options is None and not any("://" in str(p) for p in _all_paths(shard_paths)):
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  it = packing.PackIterDataset(ds.to_iter_dataset(read_options), packer, pack_window_sequences,
                               skip_limits)
  it = it.batch(batch_size, drop_remainder=True)
  if worker_count > 0:
    it = it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return it


def _all_paths(shard_paths: Sources) -> list[str]:
  if isinstance(shard_paths, Mapping):
    return [p for paths, _ in shard_paths.values() for p in paths]
  return list(shard_paths)


def _derived_seed(seed: int, i: int) -> int:
  """Independent shuffle seed of corpus i of a mixture."""
  return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


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

  def skipped(self) -> dict[str, int]:
    """Examples skipped so far per reason (templates that failed, over-long examples)."""
    return packing.skipped(self.grain.get_state())


def make_train_iterator(shard_paths: Sources, fmt: templates.Formatter, phase: str,
                        seq_positions: int, global_batch: int, seed: int, mesh: Mesh, *,
                        split_long: bool = False, num_epochs: int | None = None,
                        pack_window_sequences: int = 8, worker_count: int = 0,
                        read_options: grain.ReadOptions | None = None,
                        example_fn: ExampleFn | None = None,
                        skip_limits: packing.SkipLimits = packing.SkipLimits()) -> TrainIterator:
  """The training iterator: global batches of `global_batch` packed sequences of
  `seq_positions` positions built with the phase's task mixture (or `example_fn`), sharded over
  `mesh`'s batch axes; each host (jax.process_index()) reads its share of the records and builds
  global_batch / process_count rows."""
  count = jax.process_count()
  if global_batch % count:
    raise ValueError(f"global_batch {global_batch} is not divisible by the {count} processes")
  packer = packing.Packer(seq_positions, fmt.layout, split_long)
  dataset = make_dataset(shard_paths, example_fn or PhaseExamples(fmt, phase, seed), packer,
                         batch_size=global_batch // count, seed=seed,
                         process_index=jax.process_index(), process_count=count,
                         num_epochs=num_epochs,
                         pack_window_sequences=pack_window_sequences, worker_count=worker_count,
                         read_options=read_options, skip_limits=skip_limits)
  return TrainIterator(dataset, batch_shardings(mesh))
