"""Model configuration: frozen, validated, and interchangeable with the official `config.json`.

`MimoAudioConfig` carries the official MiMo-Audio keys (a `Qwen2Config` plus the MiMo fields of
spec §3.3) under their official names, plus a few runtime fields of ours (compute dtype, parameter
dtype, remat policy) that never enter `config.json`. The three Qwen2 stacks of the model (backbone,
patch encoder, patch decoder) are derived from it as `StackConfig`s, the way the official
`local_config()` / `input_local_config()` derive them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
# Self-attention without a KV cache: "xla" materialises the [b, heads, t, t] scores; "splash" is
# the TPU Pallas flash kernel (memory linear in t; interpret mode off TPU); "chunked" holds the
# scores of 512 queries at a time (any backend).
ATTENTION_IMPLS = ("xla", "splash", "chunked")

# The official model class and HF model type written into config.json.
_ARCHITECTURE = "MiMoAudioForCausalLM"
_MODEL_TYPE = "qwen2"

# MiMo keys stored in config.json as dash-separated strings.
_DASHED_KEYS = ("speech_vocab_size", "speech_zeroemb_idx", "delay_pattern")


class ConfigError(ValueError):
  """A configuration value is missing, malformed or inconsistent; the message names the field."""


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """One Qwen2-style decoder stack: the backbone, the patch encoder or the patch decoder."""

  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  rope_theta: float
  norm_eps: float
  causal: bool
  dtype: str = "float32"
  remat_policy: str = "none"
  # False unrolls the loop over layers (the params stay stacked): no per-layer residual buffers
  # to fill and slice, so shallow stacks step faster on CPU; compile time grows with depth.
  scan_layers: bool = True
  attention: str = "xla"
  # Dropout on the attention probabilities, applied only when the caller passes a key (training).
  attention_dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class MimoAudioConfig:
  """The speech LM. Field names are the official config.json keys, except the runtime block."""

  # Qwen2 backbone.
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  intermediate_size: int
  vocab_size: int
  rope_theta: float = 640000.0
  rms_norm_eps: float = 1e-6
  max_position_embeddings: int = 8192
  hidden_act: str = "silu"
  tie_word_embeddings: bool = False
  # MiMo audio fields (spec §3.3).
  group_size: int = 4
  audio_channels: int = 8
  speech_vocab_size: tuple[int, ...] = (1025, 1025, 129, 129, 129, 129, 129, 129)
  speech_zeroemb_idx: tuple[int, ...] = (1024, 1024, 128, 128, 128, 128, 128, 128)
  delay_pattern: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
  local_dim: int = 1024
  local_layers: int = 16
  local_attn_heads: int = 64
  local_ffn_dim: int = 4096
  local_attn_dropout: float = 0.1
  input_local_layers: int = 6
  input_local_dim: int = 1024
  input_full_attention: bool = True
  # Runtime (ours; never written to config.json).
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = True  # StackConfig.scan_layers, for all three stacks
  # The backbone's attention without a cache (ATTENTION_IMPLS). The patch stacks always use
  # "xla": their sequences (a patch, the decoder's steps) are shorter than one kernel block.
  attention: str = "xla"
  # The official code sums the 8 speech embeddings into a bfloat16 buffer whatever the model
  # dtype, so its patch encoder sees bf16 inputs. True reproduces that rounding, to match the
  # released PyTorch code's fp32 outputs (within 6e-6 on the tiny fixtures, most values not
  # bit-equal: experiments/results/official_parity.md); False (default) sums in the compute
  # dtype, the computation the model defines, which an fp32 run then carries out without it.
  official_bf16_speech_sum: bool = False

  def __post_init__(self):
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings",
                 "group_size", "audio_channels", "local_dim", "local_layers", "local_attn_heads",
                 "local_ffn_dim", "input_local_layers", "input_local_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
    _check(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
    _check(0 < self.rms_norm_eps < 1, "rms_norm_eps", f"must be in (0, 1), got {self.rms_norm_eps}")
    _check(0 <= self.local_attn_dropout < 1, "local_attn_dropout",
           f"must be in [0, 1), got {self.local_attn_dropout}")
    _check(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
           f"{self.num_key_value_heads} does not divide num_attention_heads "
           f"{self.num_attention_heads}")
    _check(self.head_dim % 2 == 0, "head_dim", f"RoPE needs an even head_dim, got {self.head_dim}")
    _check(self.hidden_act == "silu", "hidden_act", f"only 'silu' is supported, got "
           f"{self.hidden_act!r}")
    _check(not self.tie_word_embeddings, "tie_word_embeddings",
           "MiMo-Audio has an untied lm_head; tied embeddings are not supported")
    for name in ("local_dim", "input_local_dim"):
      dim = getattr(self, name)
      _check(dim % self.local_attn_heads == 0, name,
             f"{dim} is not divisible by local_attn_heads {self.local_attn_heads}")
      _check((dim // self.local_attn_heads) % 2 == 0, name,
             f"local head_dim {dim // self.local_attn_heads} must be even for RoPE")
    for name in _DASHED_KEYS:
      value = getattr(self, name)
      _check(isinstance(value, tuple) and len(value) == self.audio_channels, name,
             f"needs one entry per audio channel ({self.audio_channels}), got {value!r}")
    for ch, (size, empty) in enumerate(zip(self.speech_vocab_size, self.speech_zeroemb_idx)):
      _check(0 <= empty < size, "speech_zeroemb_idx",
             f"channel {ch}: empty id {empty} outside its vocabulary of {size}")
    _check(all(d >= 0 for d in self.delay_pattern), "delay_pattern",
           f"delays must be non-negative, got {self.delay_pattern}")
    for name in ("dtype", "param_dtype"):
      _check(getattr(self, name) in DTYPES, name,
             f"must be one of {DTYPES}, got {getattr(self, name)!r}")
    _check(self.remat_policy in REMAT_POLICIES, "remat_policy",
           f"must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
    _check(isinstance(self.scan_layers, bool), "scan_layers",
           f"must be True or False, got {self.scan_layers!r}")
    _check(self.attention in ATTENTION_IMPLS, "attention",
           f"must be one of {ATTENTION_IMPLS}, got {self.attention!r}")

  # --- the three stacks -------------------------------------------------------------------------
  @property
  def backbone(self) -> StackConfig:
    return StackConfig(
        d_model=self.hidden_size, n_layers=self.num_hidden_layers,
        n_heads=self.num_attention_heads, n_kv_heads=self.num_key_value_heads,
        head_dim=self.head_dim, d_ff=self.intermediate_size, rope_theta=self.rope_theta,
        norm_eps=self.rms_norm_eps, causal=True, dtype=self.dtype,
        remat_policy=self.remat_policy, scan_layers=self.scan_layers, attention=self.attention)

  @property
  def patch_encoder(self) -> StackConfig:
    # Official input_local_config(): FFN = 4 x dim, heads = kv heads = local_attn_heads, the
    # stack is causal unless input_full_attention is set, and both local stacks (this one and
    # local_config()'s patch decoder) take local_attn_dropout as their attention dropout.
    return StackConfig(
        d_model=self.input_local_dim, n_layers=self.input_local_layers,
        n_heads=self.local_attn_heads, n_kv_heads=self.local_attn_heads,
        head_dim=self.input_local_dim // self.local_attn_heads, d_ff=4 * self.input_local_dim,
        rope_theta=self.rope_theta, norm_eps=self.rms_norm_eps,
        causal=not self.input_full_attention, dtype=self.dtype, remat_policy=self.remat_policy,
        scan_layers=self.scan_layers, attention_dropout=self.local_attn_dropout)

  @property
  def patch_decoder(self) -> StackConfig:
    return StackConfig(
        d_model=self.local_dim, n_layers=self.local_layers, n_heads=self.local_attn_heads,
        n_kv_heads=self.local_attn_heads, head_dim=self.local_dim // self.local_attn_heads,
        d_ff=self.local_ffn_dim, rope_theta=self.rope_theta, norm_eps=self.rms_norm_eps,
        causal=True, dtype=self.dtype, remat_policy=self.remat_policy,
        scan_layers=self.scan_layers, attention_dropout=self.local_attn_dropout)

  # --- official config.json ---------------------------------------------------------------------
  def to_official_dict(self) -> dict[str, Any]:
    out: dict[str, Any] = {"architectures": [_ARCHITECTURE], "model_type": _MODEL_TYPE}
    for field in dataclasses.fields(self):
      if field.name in _RUNTIME_FIELDS:
        continue
      value = getattr(self, field.name)
      out[field.name] = "-".join(map(str, value)) if field.name in _DASHED_KEYS else value
    # Keys the official Qwen2Config reader expects; fixed for MiMo-Audio.
    out.update(attention_bias=True, attention_dropout=0.0, use_sliding_window=False,
               sliding_window=None, rope_scaling=None, use_cache=True)
    return out

  @classmethod
  def from_official_dict(cls, raw: dict[str, Any], **runtime: Any) -> MimoAudioConfig:
    """Builds a config from official keys; unknown keys are ignored, runtime fields come as kwargs."""
    bad_runtime = set(runtime) - _RUNTIME_FIELDS
    if bad_runtime:
      raise ConfigError(f"{sorted(bad_runtime)[0]}: not a runtime field; runtime fields are "
                        f"{sorted(_RUNTIME_FIELDS)}")
    names = {f.name for f in dataclasses.fields(cls)} - _RUNTIME_FIELDS
    kwargs: dict[str, Any] = {k: v for k, v in raw.items() if k in names}
    for key in _REQUIRED_KEYS:
      if key not in kwargs:
        raise ConfigError(f"{key}: missing from config.json")
    if "head_dim" not in kwargs:  # Qwen2Config's own fallback.
      kwargs["head_dim"] = kwargs["hidden_size"] // kwargs["num_attention_heads"]
    if "input_full_attention" not in raw:
      # The official code reads a missing key as False (a causal patch encoder); follow it.
      logging.warning("config.json has no input_full_attention: the patch encoder will be causal, "
                      "as the official code would run it")
      kwargs["input_full_attention"] = False
    for key in _DASHED_KEYS:
      if key in kwargs:
        kwargs[key] = _parse_dashed(key, kwargs[key])
    if raw.get("use_sliding_window"):
      raise ConfigError("use_sliding_window: sliding-window attention in the backbone is not "
                        "part of MiMo-Audio")
    return cls(**kwargs, **runtime)

  def replace(self, **changes: Any) -> MimoAudioConfig:
    return dataclasses.replace(self, **changes)


_RUNTIME_FIELDS = frozenset({"dtype", "param_dtype", "remat_policy", "scan_layers",
                             "official_bf16_speech_sum", "attention"})
_REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "vocab_size")


def _check(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"{field}: {message}")


def _parse_dashed(key: str, value: Any) -> tuple[int, ...]:
  if isinstance(value, (list, tuple)):
    items = list(value)
  elif isinstance(value, str):
    items = value.split("-")
  else:
    raise ConfigError(f"{key}: expected a dash-separated string such as '0-1-2', got {value!r}")
  try:
    return tuple(int(v) for v in items)
  except ValueError:
    raise ConfigError(f"{key}: expected integers separated by '-', got {value!r}") from None


def read_config_json(path: str) -> dict[str, Any]:
  """The dict in an official config.json (path may be the folder holding it)."""
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise ConfigError(f"config: no config.json at {path}") from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"config: {path} is not valid JSON ({e})") from None


def write_config_json(official: dict[str, Any], path: str) -> None:
  """Writes an official config.json (path may be the target folder)."""
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  with open(path, "w") as f:
    json.dump(official, f, indent=2, sort_keys=True)
    f.write("\n")


def load_config(path: str, **runtime: Any) -> MimoAudioConfig:
  """Reads an official config.json (or the folder holding it)."""
  return MimoAudioConfig.from_official_dict(read_config_json(path), **runtime)


def save_config(cfg: MimoAudioConfig, path: str) -> None:
  write_config_json(cfg.to_official_dict(), path)


def tiny(**changes: Any) -> MimoAudioConfig:
  """Seconds on a CPU; the shapes of the official tiny fixtures."""
  cfg = MimoAudioConfig(
      hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      head_dim=16, intermediate_size=128, vocab_size=512, local_dim=32, local_layers=2,
      local_attn_heads=4, local_ffn_dim=64, input_local_layers=2, input_local_dim=32,
      dtype="float32")
  return cfg.replace(**changes)


def mimo_audio_7b(**changes: Any) -> MimoAudioConfig:
  """The released MiMo-Audio-7B (spec §3.3)."""
  cfg = MimoAudioConfig(
      hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
      head_dim=128, intermediate_size=11008, vocab_size=151680)
  return cfg.replace(**changes)


PRESETS = {"tiny": tiny, "7b": mimo_audio_7b}

PHASES = ("understanding", "generation", "sft")
# Loss weights of the text channel and the 8 audio channels (spec §5.1): phase 1 trains on text
# only, so its patch decoder is never run.
PHASE_LOSS_WEIGHTS = {
    "understanding": (1, 0, 0, 0, 0, 0, 0, 0, 0),
    "generation": (100, 12, 8, 6, 4, 2, 2, 1, 1),
    "sft": (100, 12, 8, 6, 4, 2, 2, 1, 1),
}


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the single next-token objective is weighted (spec §5.1, §10)."""

  phase: str = "generation"
  # Text channel first, then one weight per audio channel; None takes the phase's weights.
  channel_weights: tuple[float, ...] | None = None
  # Weight of text targets that are <|empty|> (the "an audio patch comes next" token).
  empty_loss_weight: float = 0.01
  # Positions per chunk of the text cross-entropy (0: one chunk). Chunks are rematerialised, so
  # the [positions, vocab] fp32 logits are never held whole.
  text_chunk_size: int = 0
  # Share of each sequence's positions that the patch encoder and the patch decoder run on (the
  # audio positions gathered to a static capacity; those past it are dropped and counted, see
  # mimo_jax.lm.loss.loss). 0: no capacity, both run on every position and text is masked.
  audio_capacity: float = 0.0
  # Per audio channel, the probability that a code the model reads in training (patch encoder
  # input, patch decoder teacher-forced input) is replaced by a random code of its codebook; the
  # targets stay clean. In generation the model reads its own codes back, and a small model's
  # fine channels are often wrong: trained on clean codes only, it derails on them (see
  # experiments/results/learning.md). None: no noise.
  input_code_noise: tuple[float, ...] | None = None

  def __post_init__(self):
    _check(self.phase in PHASES, "phase", f"must be one of {PHASES}, got {self.phase!r}")
    weights = self.weights
    _check(all(w >= 0 for w in weights) and weights[0] > 0, "channel_weights",
           f"needs non-negative weights with a positive text weight, got {weights}")
    _check(0 <= self.empty_loss_weight <= 1, "empty_loss_weight",
           f"must be in [0, 1], got {self.empty_loss_weight}")
    _check(self.text_chunk_size >= 0, "text_chunk_size",
           f"must be >= 0, got {self.text_chunk_size}")
    _check(0 <= self.audio_capacity <= 1, "audio_capacity",
           f"must be in [0, 1] (0: none), got {self.audio_capacity}")
    _check(all(0 <= q <= 1 for q in self.input_code_noise or ()), "input_code_noise",
           f"needs probabilities in [0, 1], got {self.input_code_noise}")

  @property
  def weights(self) -> tuple[float, ...]:
    return PHASE_LOSS_WEIGHTS[self.phase] if self.channel_weights is None else self.channel_weights

  @property
  def trains_audio(self) -> bool:
    return any(w > 0 for w in self.weights[1:])


def preset(name: str, **changes: Any) -> MimoAudioConfig:
  if name not in PRESETS:
    raise ConfigError(f"preset: unknown preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name](**changes)
