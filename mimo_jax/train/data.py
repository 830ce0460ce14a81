"""Batches for the train step: the real pipeline over pre-tokenised shards, or synthetic ones.

Batch contract (what `mimo_jax.lm.loss.loss` reads), per global batch of b sequences of P LLM
positions: `input_ids` int32 [b, 1 + c, g * P], `segment_ids` / `positions` / `loss_mask` int32
[b, P]. Each process builds its rows and `mimo_jax.data.pipeline.TrainIterator` assembles the
global arrays (`jax.make_array_from_process_local_data`).

`source: shards` is `mimo_jax.data.pipeline.make_train_iterator` (the phase's task mixture,
packing, per-host shares) over the shards `python -m mimo_jax.pretokenize` wrote. The synthetic
source draws every global batch from a seeded pool of random interleaved
text / audio examples: batch i is the same whatever the number of processes or devices (only
the rows each process builds differ), and a model can learn it (the pool repeats).
"""

from __future__ import annotations

from typing import NamedTuple

import grain
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding

from mimo_jax.config import ConfigError, MimoAudioConfig
from mimo_jax.data import packing, pipeline, pretokenize, templates
from mimo_jax.data.tokenizer import TextTokenizer, TokenizerError
from mimo_jax.sharding import MeshError
from mimo_jax.train import config as train_config

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
    return {k: np.stack([pool[j][k] for j in picks[start:stop]]) for k in pipeline.BATCH_AXES}

  return grain.MapDataset.range(1 << 40).map(batch)


class Source(NamedTuple):
  """A run's batches: `iterator` yields global batches (dicts of jax.Arrays) and its `.grain`
  is the Grain iterator to checkpoint; `empty_id` is the id of `<|empty|>` in its tokenizer."""

  iterator: pipeline.TrainIterator
  empty_id: int


def make_source(cfg: ml_collections.ConfigDict, model_cfg: MimoAudioConfig,
                mesh: Mesh) -> Source:
  """The batches `cfg.data` describes, sharded over `mesh`'s batch axes."""
  t, d = cfg.train, cfg.data
  shardings = pipeline.batch_shardings(mesh)
  if d.source == "synthetic":
    shape = (t.batch_size, 1 + model_cfg.audio_channels, model_cfg.group_size * t.positions)
    rows = local_rows(shardings["input_ids"], shape)
    dataset = synthetic_dataset(model_cfg, d, t.batch_size, t.positions, rows)
    return Source(pipeline.TrainIterator(dataset.to_iter_dataset(), shardings), d.empty_id)
  paths = pretokenize.shard_paths(d.path)
  if not paths:
    raise ConfigError(f"config.data.path: no pre-tokenised shards (shard-*"
                      f"{pretokenize.SHARD_SUFFIX}) in {d.path}")
  check_codes_fit(d.path, model_cfg)
  try:
    text_tokenizer = (TextTokenizer.load(d.tokenizer) if d.tokenizer else TextTokenizer.mimo())
    text_tokenizer.check_fits(model_cfg.vocab_size)
  except TokenizerError as e:
    raise ConfigError(f"config.data.tokenizer: {e}") from None
  fmt = templates.Formatter.from_config(model_cfg, text_tokenizer)
  limits = packing.SkipLimits(max_fraction=d.max_skip_fraction,
                              max_empty_windows=d.max_empty_windows)
  mixtures = {t.phase: without_uncaptioned(train_config.task_mixture(t.phase, d.task_weights),
                                           paths)}
  try:
    iterator = pipeline.make_train_iterator(
        paths, fmt, t.phase, t.positions, t.batch_size, d.seed, mesh,
        worker_count=d.worker_count, skip_limits=limits,
        example_fn=pipeline.PhaseExamples(fmt, t.phase, d.seed, mixtures))
  except ValueError as e:  # shards that cannot feed this job (e.g. no records)
    raise ConfigError(f"config.data.path: {e}") from None
  return Source(iterator, fmt.layout.tokens.empty)


def without_uncaptioned(mixture: dict[str, float], paths: list[str]) -> dict[str, float]:
  """The mixture without `audio_caption` when no record of the shards has a caption (captions
  come only from the manifest; none is made up), logged once with the count."""
  if mixture.get("audio_caption", 0) <= 0:
    return mixture
  captions, records = pretokenize.caption_count(paths)
  if captions or not records:  # no statistics: records without a caption still draw none
    return mixture
  logging.warning("audio_caption dropped from the task mixture: none of the %d records of the "
                  "shards has a caption (add 'caption' to the manifest to train captioning)",
                  records)
  mixture = {task: w for task, w in mixture.items() if task != "audio_caption"}
  if sum(mixture.values()) <= 0:
    raise ConfigError(f"config.data.task_weights: without audio_caption (no record of the shards "
                      f"has a caption) the mixture has no task with a positive weight: {mixture}")
  return mixture


def check_codes_fit(path: str, model_cfg: MimoAudioConfig) -> None:
  """The codec that wrote the shards (their plan.json) must have the LM's audio channels and
  codebook sizes: otherwise every audio example would be skipped at templating time."""
  plan = pretokenize.read_plan(path)
  if plan is None:
    logging.warning("%s has no plan.json: the codec's codebook sizes cannot be checked against "
                    "the model", path)
    return
  n_q, sizes = plan["n_q"], plan["codec"].get("codebook_sizes")
  want = tuple(model_cfg.speech_zeroemb_idx)  # the empty id of a channel is its codebook size
  if n_q != model_cfg.audio_channels or (sizes is not None and tuple(sizes[:n_q]) != want):
    raise ConfigError(f"config.data.path: the shards in {path} hold codes of {n_q} RVQ stages "
                      f"with codebook sizes {sizes and tuple(sizes[:n_q])}; the model reads "
                      f"{model_cfg.audio_channels} channels of sizes {want}: pre-tokenise with "
                      f"the model's codec, or change config.model")
