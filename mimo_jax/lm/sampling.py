"""Token samplers of generation: temperature -> top-k -> top-p -> multinomial or argmax (spec §3.5).

Axis letters: b batch rows, v vocabulary.

The settings are arrays (one value per row), not Python constants, so one compiled decode loop
serves every task preset and a batch may mix presets. The order of operations follows the
official `MiMoSampler`: temperature, top-k, top-p (nucleus over the tempered, top-k-filtered
distribution), then the ids the caller bans (audio empty ids, stop tokens before the minimum
length) are set to -inf, then argmax or a draw. One documented difference: where several logits tie exactly at the
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


# Candidates the filters look at first (lax.top_k, fast on every backend); only when a row's
# top-k exceeds it or its nucleus holds more of the mass than these do is the whole vocabulary
# sorted (XLA sorts are ~100x slower than top_k over a 152k vocabulary on CPU).
CANDIDATES = 256


def filter_logits(logits_bv: jax.Array, sp: SamplerParams) -> jax.Array:
  """Tempered logits with everything outside top-k and the top-p nucleus set to -inf.

  Nucleus (official rule): in ascending order, drop the prefix whose cumulative mass is <= 1 - p
  and never the top token; equivalently keep, from the top, every token whose higher-ranked
  tokens hold less than p of the mass. The kept set is a top segment, so one threshold value
  replaces the official scatter.
  """
  v = logits_bv.shape[-1]
  x_bv = logits_bv.astype(jnp.float32) / sp.temperature_b[:, None]
  k_b = jnp.where((sp.top_k_b > 0) & (sp.top_k_b < v), sp.top_k_b, v)
  use_p_b = sp.top_p_b < 1
  n = min(CANDIDATES, v)
  top_bn = jax.lax.top_k(x_bv, n)[0]  # descending

  def threshold(desc_bm):
    """Smallest kept value per row from the m largest tempered logits (descending)."""
    m = desc_bm.shape[-1]
    kth_b = jnp.take_along_axis(desc_bm, jnp.minimum(k_b, m)[:, None] - 1, axis=-1)[:, 0]
    kth_b = jnp.where(k_b < v, kth_b, -jnp.inf)
    kept_bm = jnp.where(jnp.arange(m)[None, :] < k_b[:, None], desc_bm, -jnp.inf)
    # Mass of the top-k-filtered distribution (normalised over the whole vocabulary).
    total_b1 = jax.nn.logsumexp(jnp.where(x_bv >= kth_b[:, None], x_bv, -jnp.inf), axis=-1,
                                keepdims=True)
    above_bm = jnp.cumsum(jnp.exp(kept_bm - total_b1), axis=-1) - jnp.exp(kept_bm - total_b1)
    n_keep_b = jnp.maximum(jnp.sum(above_bm < sp.top_p_b[:, None], axis=-1), 1)
    pth_b = jnp.take_along_axis(desc_bm, n_keep_b[:, None] - 1, axis=-1)[:, 0]
    covered_b = (n_keep_b < m) | (m == v)  # the nucleus ends inside the m candidates
    return jnp.maximum(kth_b, jnp.where(use_p_b, pth_b, -jnp.inf)), covered_b

  fast_b, covered_b = threshold(top_bn)
  full = lambda: threshold(-jnp.sort(-x_bv, axis=-1))[0]
  needs_sort = jnp.any(((k_b > n) & (k_b < v)) | (use_p_b & ~covered_b))
  keep_from_b = jax.lax.cond(needs_sort, full, lambda: fast_b)
  return jnp.where(x_bv < keep_from_b[:, None], -jnp.inf, x_bv)


def sample(keys_b: jax.Array, logits_bv: jax.Array, sp: SamplerParams,
           banned_bv: jax.Array | None = None) -> jax.Array:
  """One token id per row [b] (int32). keys_b: one PRNG key per row, so a row's draw does not
  depend on the rest of the batch. banned_bv: ids that must not be drawn (set to -inf after the
  filters, as the official sampler's removed tokens)."""
  raw_bv = logits_bv.astype(jnp.float32)
  if banned_bv is not None:
    raw_bv = jnp.where(banned_bv, -jnp.inf, raw_bv)
  argmax_b = jnp.argmax(raw_bv, axis=-1).astype(jnp.int32)

  def draw():
    x_bv = filter_logits(logits_bv, sp)
    if banned_bv is not None:
      x_bv = jnp.where(banned_bv, -jnp.inf, x_bv)
    return jax.vmap(jax.random.categorical)(keys_b, x_bv).astype(jnp.int32)

  # An all-greedy batch skips the vocabulary sorts of the filters and the draw.
  drawn_b = jax.lax.cond(jnp.all(sp.greedy_b), lambda: argmax_b, draw)
  return jnp.where(sp.greedy_b, argmax_b, drawn_b)
