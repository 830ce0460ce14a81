"""The codec trainer's data: clips from a JSONL manifest (`mimo_jax.data.manifest`) as global
batches for `mimo_jax.train.codec`.

Random crops of config.data.crop_seconds from each clip (zero-padded with their valid length when
shorter), or with data.whole_clips each clip whole from its start, zero-padded to crop_seconds
(longer clips are skipped as too_long); shuffled, repeated, batched by Grain, each process
loading its share of the rows. Unusable clips are skipped and counted by reason: up front from
the manifest's durations and, with A2T, transcripts (no_text, text_too_long), and at load time
(the loader's counts: `skipped/<reason>` in the metrics, the reasons in the log).
"""

from __future__ import annotations

import grain
import jax
import numpy as np

from mimo_jax import sharding
from mimo_jax.codec import a2t
from mimo_jax.codec import config as codec_config
from mimo_jax.codec.api import AudioError
from mimo_jax.data import audio as data_audio
from mimo_jax.data import manifest
from mimo_jax.data.pipeline import TrainIterator
from mimo_jax.data.tokenizer import TextTokenizer

# Skip reasons of the A2T transcripts.
NO_TEXT = "no_text"
TEXT_TOO_LONG = "text_too_long"


class CodecTrainError(ValueError):
  """A bad config field or unusable data; the message names it."""


def crop_samples(config, cfg: codec_config.CodecConfig) -> int:
  """Samples per batch row: crop_seconds in whole 25 Hz frames."""
  crop = int(round(config.data.crop_seconds * cfg.sampling_rate))
  crop -= crop % cfg.samples_per_frame
  if crop < cfg.samples_per_frame:
    raise CodecTrainError(f"config.data.crop_seconds: {config.data.crop_seconds} s is shorter "
                          f"than one codec frame")
  return crop


def audio_limits(config, cfg: codec_config.CodecConfig) -> data_audio.AudioLimits:
  """The usable clip durations; whole clips must also fit in a batch row."""
  longest = config.data.max_seconds
  if config.data.whole_clips:
    longest = min(longest, crop_samples(config, cfg) / cfg.sampling_rate)
  return data_audio.AudioLimits(min_seconds=config.data.min_seconds, max_seconds=longest)


def text_targets(records: list[manifest.Record], tokenizer: TextTokenizer, cfg: a2t.A2TConfig,
                 skips: manifest.Skips) -> dict[str, tuple[np.ndarray, int]]:
  """Record key -> its A2T batch row (`a2t.target_ids`) for the records with a usable
  transcript; the others are counted in `skips` (no_text, text_too_long)."""
  targets = {}
  for record in records:
    ids = tokenizer.encode(record.text, special=False)
    if not len(ids):
      skips.add(NO_TEXT, record.audio, "no transcript ('text') in the manifest")
    elif len(ids) > cfg.max_text_tokens:
      skips.add(TEXT_TOO_LONG, record.audio, f"{len(ids)} text tokens > config.a2t."
                f"max_text_tokens {cfg.max_text_tokens}")
    else:
      targets[record.key] = a2t.target_ids(cfg, ids)
  return targets


def usable_records(path: str,
                   limits: data_audio.AudioLimits) -> tuple[list[manifest.Record], manifest.Skips]:
  """The manifest's records, less those whose manifest `duration` is outside the limits (clips
  without a duration are checked when loaded)."""
  skips = manifest.Skips()
  records = []
  for record in manifest.utterances(manifest.read_manifest(path, skips), skips):
    seconds = record.duration
    if seconds is not None and not limits.min_seconds <= seconds <= limits.max_seconds:
      skips.add(data_audio.TOO_SHORT if seconds < limits.min_seconds else data_audio.TOO_LONG,
                record.audio, f"{seconds:.2f} s in the manifest")
    else:
      records.append(record)
  return records, skips


class LoadCrop(grain.transforms.RandomMap):
  """Record -> {"wav": [crop] float32, "lengths": int32}, or None if the clip cannot be used.
  With `whole` the clip is taken from its start (it fits: see `audio_limits`); with `targets`
  (A2T) the row also carries the record's "text" and "text_lengths".

  Refused clips are counted by reason in `skips` (the transform runs in this process); if every
  clip of the manifest in a row fails, the data cannot feed training and CodecTrainError says so.
  """

  def __init__(self, cfg: codec_config.CodecConfig, crop: int, limits: data_audio.AudioLimits,
               n_records: int, whole: bool = False,
               targets: dict[str, tuple[np.ndarray, int]] | None = None):
    self.cfg, self.crop, self.limits, self.n_records = cfg, crop, limits, n_records
    self.whole, self.targets = whole, targets
    self.skips = manifest.Skips()
    self._failures_in_a_row = 0

  def random_map(self, record: manifest.Record, rng: np.random.Generator):
    try:
      wav = data_audio.load_clip(record.audio, self.cfg, self.limits)
    except AudioError as e:
      self.skips.add(e.reason, record.audio, str(e))
      self._failures_in_a_row += 1
      if self._failures_in_a_row > self.n_records:
        raise CodecTrainError(f"config.data.manifest: none of its {self.n_records} clips could "
                              f"be loaded: {dict(self.skips.counts)}") from None
      return None
    self._failures_in_a_row = 0
    start = 0 if self.whole else int(rng.integers(0, max(len(wav) - self.crop, 0) + 1))
    piece = wav[start:start + self.crop]
    out = np.zeros((self.crop,), np.float32)
    out[:len(piece)] = piece
    row = {"wav": out, "lengths": np.int32(len(piece))}
    if self.targets is not None:
      text, count = self.targets[record.key]
      row.update(text=text, text_lengths=np.int32(count))
    return row


class ClipBatches(TrainIterator):
  """Global batches from the codec's Grain dataset: every array is split over the mesh's batch
  axes along its first (row) dimension; the clips skipped so far are the loader's."""

  def __init__(self, dataset: grain.IterDataset, mesh: jax.sharding.Mesh, loader: LoadCrop):
    super().__init__(dataset, {rank: jax.NamedSharding(mesh, sharding.logical_to_spec(
        ("batch",) + (None,) * (rank - 1))) for rank in (1, 2)})
    self.loader = loader

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self.grain)
    return {name: jax.make_array_from_process_local_data(self.shardings[value.ndim], value)
            for name, value in local.items()}

  def skipped(self) -> dict[str, int]:
    """Clips refused while loading since this process started, per reason."""
    return dict(self.loader.skips.counts)


def make_iterator(config, cfg: codec_config.CodecConfig, records: list[manifest.Record],
                  mesh: jax.sharding.Mesh,
                  targets: dict[str, tuple[np.ndarray, int]] | None = None) -> ClipBatches:
  """Global batches {"wav": [b, crop], "lengths": [b]} (with `targets`, also "text" [b, n] and
  "text_lengths" [b]); each process loads its share of the rows."""
  n_proc = jax.process_count()
  if config.data.batch_size % n_proc:
    raise CodecTrainError(f"config.data.batch_size: {config.data.batch_size} does not split "
                          f"over {n_proc} processes")
  loader = LoadCrop(cfg, crop_samples(config, cfg), audio_limits(config, cfg), len(records),
                    config.data.whole_clips, targets)
  dataset = (grain.MapDataset.source(records).seed(config.seed).shuffle().repeat()
             [jax.process_index()::n_proc].to_iter_dataset()
             .random_map(loader, seed=config.seed)
             .filter(lambda x: x is not None)
             .batch(config.data.batch_size // n_proc, drop_remainder=True))
  return ClipBatches(dataset, mesh, loader)
