"""Token samplers of generation: temperature -> top-k -> top-p -> multinomial or argmax (spec §3.5).

Axis letters: b batch rows, v vocabulary.

The settings are arrays (one value per row), not Python constants, so one compiled decode loop
serves every task preset and a batch may mix presets. The order of operations follows the
official `MiMoSampler`: temperature, top-k, top-p (nucleus over the tempered distribution), then
the ids the caller bans (audio empty ids, stop tokens before the minimum length) are set to -inf,
then argmax or a draw. One documented difference: where several logits tie exactly at the
nucleus edge, the official scatter keeps an arbitrary subset of them and we keep them all.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """One sampler. greedy=True is argmax (temperature, top-k, top-p cannot change it);
  top_k=0 and top_p=1.0 switch those filters off."""

  greedy: bool = False
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"temperature: must be > 0 (use greedy=True for argmax), got "
                       f"{self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k: must be >= 0 (0 = off), got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")


GREEDY = SamplerConfig(greedy=True)


@dataclasses.dataclass(frozen=True)
class TaskPreset:
  """Text (global) and audio (local) samplers of one task and the text tokens that end it."""

  text: SamplerConfig
  audio: SamplerConfig
  stop: tuple[str, ...]  # special-token strings, looked up in the text tokenizer


_AUDIO = SamplerConfig(temperature=0.9, top_p=0.95)
_ASR_STOP = ("<|endoftext|>", "<|im_end|>")
_SPEECH_STOP = ("<|endoftext|>", "<|eostm|>", "<|im_end|>")

# Official `MimoAudio` presets (spec §3.5); speech continuation and few-shot speech-to-speech are
# Base-model tasks that end their stream with <|eostm|>.
PRESETS = {
    "default": TaskPreset(SamplerConfig(temperature=0.6, top_k=50, top_p=0.95),
                          SamplerConfig(temperature=0.9, top_k=50, top_p=0.95), _SPEECH_STOP),
    "asr": TaskPreset(GREEDY, _AUDIO, _ASR_STOP),
    "tts": TaskPreset(SamplerConfig(temperature=0.6, top_p=1.0), _AUDIO, _SPEECH_STOP),
    "spoken_dialogue": TaskPreset(SamplerConfig(temperature=0.6, top_p=0.95), _AUDIO,
                                  _SPEECH_STOP),
    "speech2text_dialogue": TaskPreset(SamplerConfig(temperature=0.6, top_p=0.95), _AUDIO,
                                       _ASR_STOP),
    "audio_understanding": TaskPreset(SamplerConfig(temperature=0.3, top_p=0.95), _AUDIO,
                                      _ASR_STOP),
    "text_chat": TaskPreset(SamplerConfig(temperature=0.4, top_p=0.95), _AUDIO, _ASR_STOP),
    "in_context_learning_s2s": TaskPreset(GREEDY, _AUDIO, ("<|endoftext|>", "<|eostm|>")),
    "continuation": TaskPreset(GREEDY, _AUDIO, ("<|endoftext|>", "<|eostm|>")),
    "few_shot_qa": TaskPreset(GREEDY, _AUDIO, ("<|endoftext|>", "<|sosp|>")),
}


class SamplerParams(NamedTuple):
  """Per-row sampler settings as arrays [b] (traced, so changing them never recompiles)."""

  greedy_b: jax.Array
  temperature_b: jax.Array
  top_k_b: jax.Array
  top_p_b: jax.Array

  @classmethod
  def of(cls, samplers: list[SamplerConfig]) -> SamplerParams:
    return cls(np.asarray([s.greedy for s in samplers], bool),
               np.asarray([s.temperature for s in samplers], np.float32),
               np.asarray([s.top_k for s in samplers], np.int32),
               np.asarray([s.top_p for s in samplers], np.float32))


def filter_logits(logits_bv: jax.Array, sp: SamplerParams) -> jax.Array:
  """Tempered logits with everything outside top-k and the top-p nucleus set to -inf."""
  v = logits_bv.shape[-1]
  x_bv = logits_bv.astype(jnp.float32) / sp.temperature_b[:, None]
  desc_bv = -jnp.sort(-x_bv, axis=-1)
  k_b = jnp.where(sp.top_k_b > 0, jnp.minimum(sp.top_k_b, v), v)
  kth_b1 = jnp.take_along_axis(desc_bv, k_b[:, None] - 1, axis=-1)
  x_bv = jnp.where(x_bv < kth_b1, -jnp.inf, x_bv)
  # Nucleus: ascending order, drop the low tail whose cumulative mass is <= 1 - p (never the top
  # token); the drop set is a prefix of the ascending order, so a threshold value replaces the
  # official scatter.
  asc_bv = jnp.sort(x_bv, axis=-1)
  cum_bv = jnp.cumsum(jax.nn.softmax(asc_bv, axis=-1), axis=-1)
  n_drop_b = jnp.minimum(jnp.sum(cum_bv <= 1 - sp.top_p_b[:, None], axis=-1), v - 1)
  keep_from_b1 = jnp.take_along_axis(asc_bv, n_drop_b[:, None], axis=-1)
  use_p_b1 = (sp.top_p_b < 1)[:, None]
  return jnp.where(use_p_b1 & (x_bv < keep_from_b1), -jnp.inf, x_bv)


def sample(keys_b: jax.Array, logits_bv: jax.Array, sp: SamplerParams,
           banned_bv: jax.Array | None = None) -> jax.Array:
  """One token id per row [b] (int32). keys_b: one PRNG key per row, so a row's draw does not
  depend on the rest of the batch. banned_bv: ids that must not be drawn (set to -inf after the
  filters, as the official sampler's removed tokens)."""
  x_bv = filter_logits(logits_bv, sp)
  raw_bv = logits_bv.astype(jnp.float32)
  if banned_bv is not None:
    x_bv = jnp.where(banned_bv, -jnp.inf, x_bv)
    raw_bv = jnp.where(banned_bv, -jnp.inf, raw_bv)
  drawn_b = jax.vmap(jax.random.categorical)(keys_b, x_bv)
  return jnp.where(sp.greedy_b, jnp.argmax(raw_bv, axis=-1), drawn_b).astype(jnp.int32)
