"""Train the audio tokenizer (codec):
`python -m mimo_jax.train_codec --config=experiments/configs/codec_tiny.py --workdir=DIR`.

  --config      an experiment file (`get_config()`); fields override as --config.steps=100,
                --config.stage=2, --config.data.manifest=corpus/manifest.jsonl ...
  --workdir     run folder; one that already holds a checkpoint is resumed from its latest
  --mesh        overrides config.mesh (e.g. data:1,fsdp:-1,tensor:1)

Stage 1 trains encoder + decoder with EMA codebooks (`codec.train_step.make_stage1_step`) and,
when config.loss.a2t > 0, the audio-to-text auxiliary decoder (`codec.a2t`, sized by config.a2t)
on the manifest's transcripts, tokenised with the text tokenizer at config.a2t.tokenizer (a
tokenizer.json or its folder); A2T needs data.whole_clips, since a transcript covers its whole
clip. The auxiliary decoder is checkpointed with the run but never exported. Stage 2 freezes
encoder + RVQ and trains decoder + vocoder against the discriminators. A fresh run starts from
`config.init_from`: an official tokenizer folder (config.json + model.safetensors), a codec run's
workdir (its `export/` folder of final weights), or nothing (random weights; the RVQ is k-means
initialised on the first batch).

The workdir holds:
  checkpoints/<step>/{state,data}   Orbax: the whole training state (codec, EMA buffers,
                                    optimizer, discriminators and their optimizer, the A2T
                                    auxiliary decoder) and the Grain iterator position;
                                    resuming continues bit for bit
  codec_config.json                 the codec's official config.json
  metrics.jsonl                     one row per step (losses, per-stage perplexity / usage /
                                    dead codes replaced, grad norms, step time)
  tensorboard/                      the same scalars every `log_every` steps
  export/                           official tokenizer folder of the final weights (the
                                    codec only: never the A2T auxiliary decoder)

SIGTERM (preemption) saves a checkpoint after the step in flight and exits 0, as the LM trainer
does (`mimo_jax.train.preemption`: a wait for data is cut short, a process stuck in a compile is
ended with status 143 after the grace period).

Data: a JSONL manifest (`mimo_jax.data.manifest`); random crops of `crop_seconds` from each clip
(zero-padded with their valid length when shorter), or with data.whole_clips each clip whole from
its start, zero-padded to `crop_seconds` (longer clips are skipped as too_long); shuffled,
repeated, batched by Grain. Unusable clips are skipped and counted by reason: up front from the
manifest's durations and, with A2T, transcripts (no_text, text_too_long), and at load time
(`skipped_clips` in the metrics, the reasons in the log).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from mimo_jax import sharding
from mimo_jax.codec import checkpoint as codec_checkpoint
from mimo_jax.codec import config as codec_config
from mimo_jax.codec import a2t, discriminators, rvq_train, train_step
from mimo_jax.codec.api import AudioError
from mimo_jax.data import audio as data_audio
from mimo_jax.data import manifest
from mimo_jax.data.tokenizer import TextTokenizer, TokenizerError
from mimo_jax.nn.params import init_params, logical_axes
from mimo_jax.train.checkpoint import Checkpointer, abstract_like, quiet_orbax_logs
from mimo_jax.train.metrics import truncate_jsonl
from mimo_jax.train.preemption import EXIT_STUCK, GRACE_S, Preempted, Preemption

CHECKPOINT_DIR = "checkpoints"
STATE = "state"
# Skip reasons of the A2T transcripts.
NO_TEXT = "no_text"
TEXT_TOO_LONG = "text_too_long"


class CodecTrainError(ValueError):
  """A bad config field or unusable data; the message names it."""


# --- configuration -----------------------------------------------------------------------------

def codec_from(config: ml_collections.ConfigDict) -> codec_config.CodecConfig:
  overrides = {k: tuple(v) if isinstance(v, list) else v
               for k, v in config.codec.overrides.to_dict().items()}
  return codec_config.preset(config.codec.preset, **overrides)


def ema_from(config, cfg: codec_config.CodecConfig) -> rvq_train.EmaConfig:
  return rvq_train.EmaConfig.from_codec(cfg, **config.rvq.to_dict())


def disc_from(config) -> discriminators.DiscConfig:
  return discriminators.DiscConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                      for k, v in config.disc.model.to_dict().items()})


def weights_from(config) -> train_step.LossWeights:
  return train_step.LossWeights(**config.loss.to_dict())


def text_tokenizer(config) -> TextTokenizer:
  try:
    return TextTokenizer.load(config.a2t.tokenizer)
  except TokenizerError as e:
    raise CodecTrainError(f"config.a2t.tokenizer: {e}") from None


def a2t_from(config) -> a2t.A2TConfig | None:
  """The auxiliary decoder's config when A2T is on (config.loss.a2t > 0), else None."""
  if config.loss.a2t <= 0:
    return None
  tokenizer = text_tokenizer(config)
  return a2t.A2TConfig(vocab_size=tokenizer.vocab_size,
                       end_id=tokenizer.token_to_id("<|endoftext|>"),
                       max_text_tokens=config.a2t.max_text_tokens, d_model=config.a2t.d_model,
                       n_layers=config.a2t.layers, n_heads=config.a2t.heads, d_ff=config.a2t.d_ff)


def optimizer_from(opt: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
  """Clipped AdamW with linear warm-up and cosine decay to end_lr_ratio * lr."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, opt.lr, min(opt.warmup_steps, max(steps - 1, 1)), max(steps, 2),
      end_value=opt.lr * opt.end_lr_ratio)
  return optax.chain(optax.clip_by_global_norm(opt.clip),
                     optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))


def validate(config: ml_collections.ConfigDict) -> None:
  def need(ok, field, message):
    if not ok:
      raise CodecTrainError(f"config.{field}: {message}")
  need(config.stage in (1, 2), "stage", f"must be 1 or 2, got {config.stage}")
  need(config.steps > 0, "steps", f"must be positive, got {config.steps}")
  need(config.data.batch_size > 0, "data.batch_size", "must be positive")
  need(config.data.crop_seconds > 0, "data.crop_seconds", "must be positive")
  need(bool(config.data.manifest), "data.manifest", "a JSONL manifest path is required")
  need(config.stage == 1 or bool(config.init_from), "init_from",
       "stage 2 fine-tunes a trained codec: give an official tokenizer folder or a stage-1 "
       "workdir")
  need(config.loss.a2t >= 0, "loss.a2t", f"must be >= 0 (0: no A2T), got {config.loss.a2t}")
  if config.loss.a2t > 0:
    need(config.stage == 1, "loss.a2t", "A2T trains the encoder: stage 1 only (spec §1.6)")
    need(config.data.whole_clips, "data.whole_clips",
         "A2T needs whole clips (a transcript covers its whole clip, not a random crop)")
    need(bool(config.a2t.tokenizer), "a2t.tokenizer",
         "A2T needs the text tokenizer (a tokenizer.json or its folder)")


# --- data --------------------------------------------------------------------------------------

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
  for record in manifest.read_manifest(path, skips):
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


def make_iterator(config, cfg: codec_config.CodecConfig, records: list[manifest.Record],
                  targets: dict[str, tuple[np.ndarray, int]] | None = None):
  """Grain iterator of per-process batches {"wav": [b_local, crop], "lengths": [b_local]} (with
  `targets`, also "text" [b_local, n] and "text_lengths" [b_local]) and its loading transform
  (whose `skips` count the clips refused so far)."""
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
  return iter(dataset), loader


# --- state -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _compiled_step(config_json: str):
  """The jitted step and state initialiser of a config (cached: runs in one process share
  their compilations)."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  cfg = codec_from(config)
  tx = optimizer_from(config.optimizer, config.steps)
  if config.stage == 1:
    a2t_cfg = a2t_from(config)
    step = train_step.make_stage1_step(cfg, ema_from(config, cfg), tx, weights_from(config),
                                       config.seed, a2t_cfg)

    def init(codec):
      if a2t_cfg is None:
        return train_step.init_stage1(codec, tx)
      aux = init_params(a2t.a2t_specs(a2t_cfg, cfg.d_model), jax.random.key(config.seed + 2))
      return train_step.init_stage1(codec, tx, aux)

    return step, jax.jit(init)
  disc_tx = optax.chain(optax.clip_by_global_norm(config.disc.clip),
                        optax.adam(config.disc.lr, b1=config.disc.b1, b2=config.disc.b2))
  dcfg = disc_from(config)
  step = train_step.make_stage2_step(cfg, ema_from(config, cfg), dcfg, tx, disc_tx,
                                     weights_from(config))

  def init(codec):
    key = jax.random.key(config.seed + 1)
    disc = init_params(discriminators.disc_specs(dcfg), key)
    sn = init_params(discriminators.sn_specs(dcfg), jax.random.fold_in(key, 1))
    return train_step.init_stage2(codec, tx, disc, sn, disc_tx)

  return step, jax.jit(init)


@functools.partial(jax.jit, static_argnums=0)
def _random_codec(cfg: codec_config.CodecConfig, key: jax.Array) -> dict:
  return init_params(codec_checkpoint.codec_specs(cfg), key)


def _initial_codec(config, cfg, mesh) -> dict:
  specs = codec_checkpoint.codec_specs(cfg)
  axes = logical_axes(specs)
  source = config.init_from
  if not source:
    params = _random_codec(cfg, jax.random.key(config.seed))
  else:
    if os.path.isdir(os.path.join(source, "export")):
      source = os.path.join(source, "export")  # a codec run's workdir: its final weights
    if not os.path.isfile(os.path.join(source, "config.json")):
      raise CodecTrainError(f"config.init_from: {source} is not a tokenizer folder (config.json "
                            f"+ model.safetensors; a codec run's is its workdir's export/)")
    params, loaded_cfg = codec_checkpoint.import_codec(source)
    if loaded_cfg != cfg:
      raise CodecTrainError(f"config.init_from: {source} holds a codec whose config.json differs "
                            f"from config.codec")
  return sharding.shard_params(params, axes, mesh)


def initial_state(config, cfg, mesh) -> dict:
  """The fresh training state of the configured stage (codec from `init_from` or random)."""
  return _compiled_step(_config_key(config))[1](_initial_codec(config, cfg, mesh))


def _config_key(config) -> str:
  keys = ("codec", "rvq", "loss", "a2t", "optimizer", "disc", "stage", "steps", "seed")
  return json.dumps({k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
                     for k in keys}, sort_keys=True)


# --- metrics -----------------------------------------------------------------------------------

def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
  """Scalars as they are; per-stage [q] arrays as name/q0, name/q1, ..."""
  row = {}
  for name, value in metrics.items():
    value = np.asarray(value)
    if value.ndim == 0:
      row[name] = float(value)
    else:
      row.update({f"{name}/q{i}": float(v) for i, v in enumerate(value)})
  return row


# --- the loop ----------------------------------------------------------------------------------

@dataclasses.dataclass
class RunResult:
  step: int
  rows: list[dict[str, float]]  # the metrics of the steps this call ran
  state: dict
  reason: str = "finished"  # or "preempted" (SIGTERM: saved at `step`), "stopped" (stop_after)


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None,
          devices: list | None = None) -> RunResult:
  """Runs (or resumes) the configured training; `stop_after` ends the call after that step
  without a final save, as a kill would (tests and benchmarks); `devices` restricts the mesh to
  those devices (default: all)."""
  validate(config)
  preemption = Preemption(GRACE_S)
  try:
    with preemption.interruptible():  # setting up: nothing to save yet
      return _train(config, workdir, stop_after, devices, preemption)
  finally:
    preemption.close()


def _train(config, workdir: str, stop_after: int | None, devices: list | None,
           preemption: Preemption) -> RunResult:
  cfg = codec_from(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  rows_split = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.data.batch_size % rows_split:
    raise CodecTrainError(f"config.data.batch_size: {config.data.batch_size} rows do not split "
                          f"over the {rows_split} data-parallel devices of mesh {config.mesh}")
  os.makedirs(workdir, exist_ok=True)
  codec_config.save_codec_config(cfg, os.path.join(workdir, "codec_config.json"))
  records, skips = usable_records(config.data.manifest, audio_limits(config, cfg))
  targets, a2t_cfg = None, a2t_from(config)
  if a2t_cfg is not None:
    targets = text_targets(records, text_tokenizer(config), a2t_cfg, skips)
    records = [r for r in records if r.key in targets]
  if skips.total:
    logging.warning("manifest %s: skipped %d record(s): %s", config.data.manifest, skips.total,
                    dict(skips.counts))
  if not records:
    what = "audio" if targets is None else "audio with a transcript"
    raise CodecTrainError(f"config.data.manifest: no usable {what} in {config.data.manifest}: "
                          f"skipped {dict(skips.counts)}")
  iterator, loader = make_iterator(config, cfg, records, targets)
  step_fn, _ = _compiled_step(_config_key(config))

  with jax.set_mesh(mesh):
    state = initial_state(config, cfg, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                        every_steps=config.checkpoint_every, keep=config.keep_checkpoints)
    start = 0
    if ckpt.latest_step() is not None:
      start = ckpt.latest_step()
      state = ckpt.restore({STATE: abstract_like(state, shardings)},
                           data_iterator=iterator)[STATE]
      logging.info("resumed from step %d of %s", start, workdir)
    jsonl = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() == 0:
      truncate_jsonl(jsonl, start)
    writer = None
    if config.tensorboard and jax.process_index() == 0:
      from tensorboardX import SummaryWriter
      writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    row_sharding = {rank: jax.NamedSharding(mesh, sharding.logical_to_spec(
        ("batch",) + (None,) * (rank - 1))) for rank in (1, 2)}
    rows, t_start, end = [], time.perf_counter(), config.steps
    if stop_after is not None:
      end = min(end, stop_after)
    done, reason = start, "finished" if end == config.steps else "stopped"
    with preemption.shielded():  # steps and saves run to their end; SIGTERM is checked after each
      for step in range(start, end):
        local = preemption.next(iterator)
        if local is None:
          reason = "preempted"
          break
        batch = {name: jax.make_array_from_process_local_data(row_sharding[value.ndim], value)
                 for name, value in local.items()}
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch)
        row = flatten_metrics(jax.device_get(metrics))
        row.update(step=step + 1, step_time_s=time.perf_counter() - t0,
                   skipped_clips=loader.skips.total)  # refused since this process started
        rows.append(row)
        if not np.isfinite(row["loss"]):
          ckpt.wait()
          raise FloatingPointError(f"step {step + 1}: non-finite loss {row['loss']}; the last "
                                   f"checkpoint is step {ckpt.latest_step()}")
        done = step + 1
        if jax.process_index() == 0:
          with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if step == start:  # the first step's time is mostly compilation: rates start after it
          t_start = time.perf_counter()
        if done % config.log_every == 0 or done == end:
          _log(row, config.steps, start + 1, t_start, writer)
        ckpt.save(done, {STATE: state}, iterator)
        if preemption.agreed():
          reason = "preempted"
          break
      if reason != "stopped":
        ckpt.save(done, {STATE: state}, iterator, force=ckpt.latest_step() != done)
      ckpt.wait()
    ckpt.close()
    if writer is not None:
      writer.close()
  if loader.skips.total:
    logging.warning("clips refused while loading: %s", loader.skips.to_json())
  if reason == "preempted":
    logging.info("preempted at step %d; checkpoint %d in %s", done, done, workdir)
  elif done == config.steps and config.export and jax.process_index() == 0:
    codec_checkpoint.export_codec(jax.device_get(state["codec"]), cfg,
                                  os.path.join(workdir, "export"))
  return RunResult(step=done, rows=rows, state=state, reason=reason)


def _log(row, total, start, t_start, writer) -> None:
  done = row["step"] - start
  rate = done / max(time.perf_counter() - t_start, 1e-9)
  usage = " ".join(f"{row[k]:.2f}" for k in sorted(row) if k.startswith("usage/"))
  perplexity = " ".join(f"{row[k]:.0f}" for k in sorted(row) if k.startswith("perplexity/"))
  extra = "".join(f" {k} {row[k]:.4f}" for k in ("commit", "a2t", "adv", "fm", "disc_loss")
                  if k in row)
  logging.info("step %d/%d loss %.4f mel %.4f%s | usage %s | perplexity %s | replaced %d | "
               "%.2f steps/s | ETA %.0f s", row["step"], total, row["loss"], row["mel"], extra,
               usage, perplexity, sum(v for k, v in row.items() if k.startswith("replaced/")),
               rate, (total - row["step"]) / max(rate, 1e-9))
  if writer is not None:
    for k, v in row.items():
      if k != "step":
        writer.add_scalar(k, v, row["step"])
    writer.flush()


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  config_flags.DEFINE_config_file("config", None, "Codec experiment config file.")
  flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  flags.DEFINE_string("mesh", None, "Mesh axes and sizes; default: the config's mesh.")


def main(argv):
  del argv
  quiet_orbax_logs()
  args = flags.FLAGS
  config = args.config
  if config is None:
    raise app.UsageError("--config: an experiment file is required")
  if args.mesh:
    config.mesh = args.mesh
  try:
    result = train(config, args.workdir)
  except CodecTrainError as e:
    logging.error("%s", e)
    raise SystemExit(2) from None
  except Preempted:
    logging.warning("SIGTERM before the run could save; the latest checkpoint in %s stands",
                    args.workdir)
    raise SystemExit(EXIT_STUCK) from None
  logging.info("%s at step %d: %s", result.reason, result.step,
               result.rows[-1] if result.rows else {})


if __name__ == "__main__":
  define_flags()
  app.run(main)
