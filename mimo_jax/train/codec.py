"""The codec's training job in the one loop (`mimo_jax.train.loop.run`):
`python -m mimo_jax.train_codec` runs `train(config, workdir)`.

Stage 1 trains encoder + decoder with EMA codebooks (`codec.train_step.make_stage1_step`) and,
when config.loss.a2t > 0, the audio-to-text auxiliary decoder (`codec.a2t`, sized by config.a2t)
on the manifest's transcripts, tokenised with the text tokenizer at config.a2t.tokenizer (a
tokenizer.json or its folder); A2T needs data.whole_clips, since a transcript covers its whole
clip. The auxiliary decoder is checkpointed with the run but never exported. Stage 2 freezes
encoder + RVQ and trains decoder + vocoder against the discriminators. A fresh run starts from
`config.init_from`: an official tokenizer folder (config.json + model.safetensors), a codec
run's workdir (its `export/` folder of final weights), or nothing (random weights; the RVQ is
k-means initialised on the first batch). Data: `mimo_jax.train.codec_data`.

The loop gives the codec what it gives the LM: resume (bitwise on CPU, also onto another mesh),
SIGTERM saves, keep-last-K checkpoints, the non-finite guard (a step whose loss or gradient norm
is not finite is skipped; config.max_bad_steps in a row stop the run after a checkpoint),
metrics and multi-host runs. The workdir holds:

  checkpoints/<step>/{state,data}   Orbax: the whole training state (codec, EMA buffers,
                                    optimizer, discriminators and their optimizer, the A2T
                                    auxiliary decoder, the guard's counters) and each process's
                                    Grain iterator position
  run.json                          the resolved config and the codec's official config
  codec_config.json                 the codec's official config.json
  metrics.jsonl                     one row per step (losses, per-stage perplexity / usage /
                                    dead codes replaced, grad norms, step time)
  tensorboard/, loss_curve.png      the same scalars every `log_every` steps; loss and mel curves
  export/                           official tokenizer folder of the final weights (the
                                    codec only: never the A2T auxiliary decoder)
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from jax.experimental import multihost_utils

from mimo_jax import sharding
from mimo_jax.codec import a2t, discriminators, rvq_train, train_step
from mimo_jax.codec import checkpoint as codec_checkpoint
from mimo_jax.codec import config as codec_config
from mimo_jax.config import ConfigError
from mimo_jax.data.tokenizer import TextTokenizer, TokenizerError
from mimo_jax.nn.params import init_params, logical_axes
from mimo_jax.train import loop, run_dir
from mimo_jax.train.codec_data import CodecTrainError, audio_limits, make_iterator, text_targets
from mimo_jax.train.codec_data import usable_records
from mimo_jax.train.preemption import GRACE_S, Preemption

STATE = "state"  # the codec run's one checkpoint item
CODEC_CONFIG = "codec_config.json"


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
  need(config.max_bad_steps > 0, "max_bad_steps", f"must be positive, got {config.max_bad_steps}")
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


GUARD_COUNTERS = ("bad_steps", "skipped_steps")


def skip_non_finite(step: Callable[[dict, dict], tuple[dict, dict]]):
  """The codec step with the non-finite guard the loop reads (as the LM step has): a step whose
  loss or gradient norm is not finite leaves the state as it was, except its step count (its
  batch is consumed); `bad_steps` counts such steps in a row, `skipped_steps` in total."""

  def guarded(state: dict, batch: dict) -> tuple[dict, dict]:
    inner = {k: v for k, v in state.items() if k not in GUARD_COUNTERS}
    new, metrics = step(inner, batch)
    finite = jnp.isfinite(metrics["loss"])
    if "grad_norm" in metrics:
      finite &= jnp.isfinite(metrics["grad_norm"])
    kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, inner)
    kept["step"] = new["step"]
    kept["bad_steps"] = jnp.where(finite, 0, state["bad_steps"] + 1)
    kept["skipped_steps"] = state["skipped_steps"] + (~finite).astype(jnp.int32)
    return kept, metrics

  return jax.jit(guarded, donate_argnums=0)


def with_guard_counters(state: dict) -> dict:
  return {**state, **{name: jnp.zeros([], jnp.int32) for name in GUARD_COUNTERS}}


@functools.lru_cache(maxsize=8)
def _compiled_step(config_json: str):
  """The jitted, guarded step and the state initialiser of a config (cached: runs in one
  process share their compilations)."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  cfg = codec_from(config)
  tx = optimizer_from(config.optimizer, config.steps)
  if config.stage == 1:
    a2t_cfg = a2t_from(config)
    step = train_step.make_stage1_step(cfg, ema_from(config, cfg), tx, weights_from(config),
                                       config.seed, a2t_cfg)

    def init(codec):
      if a2t_cfg is None:
        return with_guard_counters(train_step.init_stage1(codec, tx))
      aux = init_params(a2t.a2t_specs(a2t_cfg, cfg.d_model), jax.random.key(config.seed + 2))
      return with_guard_counters(train_step.init_stage1(codec, tx, aux))

    return skip_non_finite(step), jax.jit(init)
  disc_tx = optax.chain(optax.clip_by_global_norm(config.disc.clip),
                        optax.adam(config.disc.lr, b1=config.disc.b1, b2=config.disc.b2))
  dcfg = disc_from(config)
  step = train_step.make_stage2_step(cfg, ema_from(config, cfg), dcfg, tx, disc_tx,
                                     weights_from(config))

  def init(codec):
    key = jax.random.key(config.seed + 1)
    disc = init_params(discriminators.disc_specs(dcfg), key)
    sn = init_params(discriminators.sn_specs(dcfg), jax.random.fold_in(key, 1))
    return with_guard_counters(train_step.init_stage2(codec, tx, disc, sn, disc_tx))

  return skip_non_finite(step), jax.jit(init)


@functools.partial(jax.jit, static_argnums=0)
def _random_codec(cfg: codec_config.CodecConfig, key: jax.Array) -> dict:
  return init_params(codec_checkpoint.codec_specs(cfg), key)


def _initial_codec(config, cfg: codec_config.CodecConfig, mesh: jax.sharding.Mesh) -> dict:
  if not config.init_from:
    params = _random_codec(cfg, jax.random.key(config.seed))
  else:
    try:
      params, loaded_cfg = run_dir.load_codec(config.init_from)
    except ConfigError as e:  # not a tokenizer folder nor a codec run: no config.json
      raise CodecTrainError(f"config.init_from: {e}") from None
    if loaded_cfg != cfg:
      raise CodecTrainError(f"config.init_from: {config.init_from} holds a codec whose "
                            f"config.json differs from config.codec")
  return sharding.shard_params(params, logical_axes(codec_checkpoint.codec_specs(cfg)), mesh)


def _config_key(config) -> str:
  keys = ("codec", "rvq", "loss", "a2t", "optimizer", "disc", "stage", "steps", "seed")
  return json.dumps({k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
                     for k in keys}, sort_keys=True)


def summary(row: dict[str, float]) -> str:
  """The console's account of a codec step."""
  usage = " ".join(f"{row[k]:.2f}" for k in sorted(row) if k.startswith("usage/"))
  perplexity = " ".join(f"{row[k]:.0f}" for k in sorted(row) if k.startswith("perplexity/"))
  extra = "".join(f" {k} {row[k]:.4f}" for k in ("commit", "a2t", "adv", "fm", "disc_loss")
                  if k in row)
  replaced = sum(v for k, v in row.items() if k.startswith("replaced/"))
  return (f"loss {row['loss']:.4f} mel {row['mel']:.4f}{extra} | usage {usage} | perplexity "
          f"{perplexity} | replaced {replaced:.0f}")


def train(config: ml_collections.ConfigDict, workdir: str, *, max_steps: int | None = None,
          devices: list | None = None) -> loop.RunResult:
  """Runs (or resumes) the configured codec training in `workdir`; `max_steps` ends this call
  after that many steps in total without a final save, as a kill would (tests, benchmarks);
  `devices` restricts the mesh to those devices (default: all). The result's `setup` is the
  CodecConfig."""
  validate(config)
  loop.check_writable(workdir, "--workdir")
  return loop.preemptible(GRACE_S, lambda preemption: _train(config, workdir, max_steps, devices,
                                                              preemption))


def _train(config, workdir: str, max_steps: int | None, devices: list | None,
           preemption: Preemption) -> loop.RunResult:
  cfg = codec_from(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  rows_split = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.data.batch_size % rows_split:
    raise CodecTrainError(f"config.data.batch_size: {config.data.batch_size} rows do not split "
                          f"over the {rows_split} data-parallel devices of mesh {config.mesh}")
  if jax.process_index() == 0:
    codec_config.save_codec_config(cfg, os.path.join(workdir, CODEC_CONFIG))
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
  iterator = make_iterator(config, cfg, records, mesh, targets)
  step_fn, init = _compiled_step(_config_key(config))

  def fresh_state() -> dict:
    with jax.set_mesh(mesh):
      return init(_initial_codec(config, cfg, mesh))

  def step(state: dict, batch: dict) -> tuple[dict, dict]:
    with jax.set_mesh(mesh):
      return step_fn(state, batch)

  def abstract_state() -> dict:  # a fresh state's shapes and shardings, for a resume to fill
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        fresh_state())

  job = loop.Job(
      name=f"codec stage {config.stage}",
      batch=f"batch {config.data.batch_size} x {config.data.crop_seconds} s", mesh=mesh,
      step=step, abstract_state=abstract_state, fresh_state=fresh_state,
      to_items=lambda state: {STATE: state}, from_items=lambda items: items[STATE],
      info={"config": config.to_dict(), "codec": cfg.to_official_dict(),
            "mesh": dict(mesh.shape), "devices": jax.device_count(),
            "processes": jax.process_count()},
      check_resume=lambda info: info,
      reporter=dict(summary=summary, curves=("loss", "mel")))
  schedule = loop.Schedule(steps=config.steps, checkpoint_every=config.checkpoint_every,
                           keep=config.keep_checkpoints, log_dir=workdir,
                           log_every=config.log_every, tensorboard=config.tensorboard,
                           max_bad_steps=config.max_bad_steps)
  result = loop.run(job, schedule, workdir, iterator, cfg, preemption, max_steps)
  if iterator.loader.skips.total:
    logging.warning("clips refused while loading: %s", iterator.loader.skips.to_json())
  if result.reason == "finished" and result.step == config.steps and config.export:
    # Every process takes part in gathering the shards; the first writes the folder.
    codec = multihost_utils.process_allgather(result.state["codec"], tiled=True)
    if jax.process_index() == 0:
      codec_checkpoint.export_codec(codec, cfg, os.path.join(workdir, run_dir.EXPORT_DIR))
  return result
