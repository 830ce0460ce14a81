"""Batches for the train step: a Grain iterator per process, assembled into global arrays.

Batch contract (what `mimo_jax.lm.loss.loss` reads), per global batch of b sequences of P LLM
positions: `input_ids` int32 [b, 1 + c, g * P], `segment_ids` / `positions` / `loss_mask` int32
[b, P]. Each process produces only the rows its devices hold (`local_rows`), and the global
array is assembled with `jax.make_array_from_process_local_data`.

The synthetic source draws every global batch from a seeded pool of random interleaved
text / audio examples: batch i is the same whatever the number of processes or devices (only
the rows each process builds differ), and a model can learn it (the pool repeats).
"""

from __future__ import annotations

from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from mimo_jax.config import MimoAudioConfig
from mimo_jax.sharding import MeshError

BATCH_KEYS = ("input_ids", "segment_ids", "positions", "loss_mask")


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> tuple[int, int]:
  """[start, stop) of the batch rows this process's devices hold (one contiguous block)."""
  n = global_shape[0]
  blocks = sorted({index[0].indices(n)[:2] for index in
                   sharding.addressable_devices_indices_map(global_shape).values()})
  start, stop = blocks[0][0], blocks[0][1]
  for block_start, block_stop in blocks[1:]:
    if block_start > stop:
      raise MeshError(f"this process's devices hold batch rows {blocks}, not one contiguous "
                       f"block: use a mesh whose batch axes follow the process order")
    stop = max(stop, block_stop)
  return start, stop


def synthetic_example(cfg: MimoAudioConfig, positions: int, audio_share: float, empty_id: int,
                      seed: int, index: int) -> dict[str, np.ndarray]:
  """One sequence: text positions carry a token (repeated over the g sub-slots) and empty audio;
  audio positions carry `<|empty|>` and a patch of random codes."""
  rng = np.random.default_rng([seed, index])
  g, c = cfg.group_size, cfg.audio_channels
  empty_codes_c = np.asarray(cfg.speech_zeroemb_idx)
  is_audio_p = rng.random(positions) < audio_share
  text_p = rng.integers(empty_id + 1, cfg.vocab_size, positions)
  text_p = np.where(is_audio_p, empty_id, text_p)
  codes_cpg = rng.integers(0, empty_codes_c[:, None, None], (c, positions, g))
  codes_cpg = np.where(is_audio_p[None, :, None], codes_cpg, empty_codes_c[:, None, None])
  input_ids = np.concatenate([np.repeat(text_p, g)[None], codes_cpg.reshape(c, positions * g)])
  return {"input_ids": input_ids.astype(np.int32),
          "segment_ids": np.ones(positions, np.int32),
          "positions": np.arange(positions, dtype=np.int32),
          "loss_mask": np.ones(positions, np.int32)}


def synthetic_dataset(cfg: MimoAudioConfig, data: ml_collections.ConfigDict, batch_size: int,
                      positions: int, rows: tuple[int, int]) -> grain.MapDataset:
  """Element i: rows [start, stop) of global batch i, each row an example of the pool."""
  start, stop = rows
  pool = [synthetic_example(cfg, positions, data.audio_share, data.empty_id, data.seed, i)
          for i in range(data.synthetic_examples)]

  def batch(i: int) -> dict[str, np.ndarray]:
    picks = np.random.default_rng([data.seed, 1, i]).integers(0, len(pool), batch_size)
    return {k: np.stack([pool[j][k] for j in picks[start:stop]]) for k in BATCH_KEYS}

  return grain.MapDataset.range(1 << 40).map(batch)


def make_iterator(cfg: ml_collections.ConfigDict, model_cfg: MimoAudioConfig,
                  rows: tuple[int, int]) -> grain.DatasetIterator:
  """The checkpointable iterator of this process's rows of the run's batches."""
  t = cfg.train
  if cfg.data.source == "synthetic":
    dataset = synthetic_dataset(model_cfg, cfg.data, t.batch_size, t.positions, rows)
  else:
    raise NotImplementedError("data.source 'shards' needs mimo_jax.data (issue 5)")
  return iter(dataset.to_iter_dataset())


def to_global(local: dict[str, np.ndarray], shardings: dict[str, NamedSharding],
              global_shapes: dict[str, tuple[int, ...]]) -> dict[str, jax.Array]:
  """This process's rows -> global arrays laid out as the step expects."""
  out = {}
  for key, sharding in shardings.items():
    if key not in local:
      raise KeyError(f"batch: the data source gave no {key!r} (it gave {sorted(local)})")
    out[key] = jax.make_array_from_process_local_data(sharding, local[key], global_shapes[key])
  return out


def batches(iterator: Iterator[dict], shardings: dict[str, NamedSharding],
            global_shapes: dict[str, tuple[int, ...]]) -> Iterator[dict[str, Any]]:
  for local in iterator:
    yield to_global(local, shardings, global_shapes)
