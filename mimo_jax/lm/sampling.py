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
from jax.extend.random import threefry_2x32


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


def from_temperature(temperature: float) -> SamplerConfig:
  """The sampler a single temperature asks for, as in the OpenAI API: 0 is greedy (argmax),
  anything else plain sampling at that temperature (no top-k / top-p)."""
  return GREEDY if temperature == 0 else SamplerConfig(temperature=temperature)


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


class Nucleus(NamedTuple):
  """What the filters keep: tempered logits x_bv >= keep_from_b, and the top candidates."""

  x_bv: jax.Array  # fp32 tempered logits
  keep_from_b: jax.Array  # smallest kept value per row (-inf: every token)
  top_bn: jax.Array  # the n largest tempered logits, descending
  ids_bn: jax.Array  # their ids
  inside_b: jax.Array  # bool: every kept token is among the candidates


def nucleus(logits_bv: jax.Array, sp: SamplerParams) -> Nucleus:
  """Temperature, top-k and top-p of each row (see `filter_logits`)."""
  v = logits_bv.shape[-1]
  x_bv = logits_bv.astype(jnp.float32) / sp.temperature_b[:, None]
  k_b = jnp.where((sp.top_k_b > 0) & (sp.top_k_b < v), sp.top_k_b, v)
  use_p_b = sp.top_p_b < 1
  n = min(CANDIDATES, v)
  # Descending. The barriers keep XLA:CPU's TopK kernel: with the ids passed on into a `cond`
  # it otherwise lowers top_k to a full sort of the vocabulary (about 4x slower audio steps on
  # the tiny model). One barrier per output: a single barrier over the pair took the TopK tuple
  # itself as operand, and XLA's TopkDecomposer aborted the process on it (the quickstart
  # notebook's generation).
  top_bn, ids_bn = jax.lax.top_k(x_bv, n)
  top_bn, ids_bn = jax.lax.optimization_barrier(top_bn), jax.lax.optimization_barrier(ids_bn)

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
  # Strictly below the last candidate: a tie with it could reach past the candidates.
  inside_b = (n == v) | (top_bn[:, -1] < keep_from_b)
  return Nucleus(x_bv, keep_from_b, top_bn, ids_bn.astype(jnp.int32), inside_b)


def filter_logits(logits_bv: jax.Array, sp: SamplerParams) -> jax.Array:
  """Tempered logits with everything outside top-k and the top-p nucleus set to -inf.

  Nucleus (official rule): in ascending order, drop the prefix whose cumulative mass is <= 1 - p
  and never the top token; equivalently keep, from the top, every token whose higher-ranked
  tokens hold less than p of the mass. The kept set is a top segment, so one threshold value
  replaces the official scatter.
  """
  nuc = nucleus(logits_bv, sp)
  return jnp.where(nuc.x_bv < nuc.keep_from_b[:, None], -jnp.inf, nuc.x_bv)


def _gumbel_reproducible() -> bool:
  """`gumbel_at` reproduces `jax.random.gumbel` under JAX's default threefry settings only."""
  return (jax.config.jax_threefry_partitionable and not jax.config.jax_high_dynamic_range_gumbel
          and jax.config.jax_default_prng_impl == "threefry2x32")


def gumbel_at(key: jax.Array, ids_n: jax.Array) -> jax.Array:
  """The entries ids_n of `jax.random.gumbel(key, (v,))` for any v > max(ids_n), computed
  without the other v - n: with partitionable threefry, entry i hashes the counter (0, i); the
  bits become a float in [tiny, 1) as `jax.random.uniform` makes them, then -log(-log(u))."""
  k1, k2 = jax.random.key_data(key)
  n = ids_n.shape[0]
  bits_2n = threefry_2x32(
      (k1, k2), jnp.concatenate([jnp.zeros((n,), jnp.uint32), ids_n.astype(jnp.uint32)]))
  bits_n = bits_2n[:n] ^ bits_2n[n:]
  finfo = jnp.finfo(jnp.float32)
  one = np.array(1.0, np.float32).view(np.uint32)
  floats_n = jax.lax.bitcast_convert_type((bits_n >> np.uint32(32 - finfo.nmant)) | one,
                                          jnp.float32) - jnp.float32(1)
  minval = jnp.float32(finfo.tiny)
  u_n = jax.lax.max(minval, floats_n * (jnp.float32(1) - minval) + minval)
  return -jnp.log(-jnp.log(u_n))


def _draw_candidates(keys_b: jax.Array, nuc: Nucleus, banned_bv: jax.Array | None) -> jax.Array:
  """`jax.random.categorical` over the filtered vocabulary, drawn on the candidates alone (they
  hold every kept token): the Gumbel-max argmax with the same noise at the same ids, ties to the
  lowest id as argmax breaks them."""
  x_bn = jnp.where(nuc.top_bn < nuc.keep_from_b[:, None], -jnp.inf, nuc.top_bn)
  if banned_bv is not None:
    x_bn = jnp.where(jnp.take_along_axis(banned_bv, nuc.ids_bn, axis=-1), -jnp.inf, x_bn)
  z_bn = jax.vmap(gumbel_at)(keys_b, nuc.ids_bn) + x_bn
  best_b1 = jnp.max(z_bn, axis=-1, keepdims=True)
  v = nuc.x_bv.shape[-1]
  first_b = jnp.min(jnp.where(z_bn == best_b1, nuc.ids_bn, v), axis=-1)
  # Nothing kept (every kept id banned): argmax over an all -inf row is id 0.
  return jnp.where(best_b1[:, 0] == -jnp.inf, 0, first_b).astype(jnp.int32)


def _draw_vocab(keys_b: jax.Array, nuc: Nucleus, banned_bv: jax.Array | None) -> jax.Array:
  x_bv = jnp.where(nuc.x_bv < nuc.keep_from_b[:, None], -jnp.inf, nuc.x_bv)
  if banned_bv is not None:
    x_bv = jnp.where(banned_bv, -jnp.inf, x_bv)
  return jax.vmap(jax.random.categorical)(keys_b, x_bv).astype(jnp.int32)


def sample(keys_b: jax.Array, logits_bv: jax.Array, sp: SamplerParams,
           banned_bv: jax.Array | None = None) -> jax.Array:
  """One token id per row [b] (int32). keys_b: one PRNG key per row, so a row's draw does not
  depend on the rest of the batch. banned_bv: ids that must not be drawn (set to -inf after the
  filters, as the official sampler's removed tokens)."""

  def greedy():
    raw_bv = logits_bv.astype(jnp.float32)
    if banned_bv is not None:
      raw_bv = jnp.where(banned_bv, -jnp.inf, raw_bv)
    return jnp.argmax(raw_bv, axis=-1).astype(jnp.int32)

  def draw():
    nuc = nucleus(logits_bv, sp)
    # The Gumbel noise of the whole vocabulary (a hash per id) cost more than the rest of the
    # sampler; where the kept tokens lie among the candidates, their noise alone decides.
    if _gumbel_reproducible():
      drawn_b = jax.lax.cond(jnp.all(nuc.inside_b), _draw_candidates, _draw_vocab,
                             keys_b, nuc, banned_bv)
    else:
      drawn_b = _draw_vocab(keys_b, nuc, banned_bv)
    # Greedy rows of a mixed batch take the argmax (skipped when there are none).
    return jax.lax.cond(jnp.any(sp.greedy_b), lambda: jnp.where(sp.greedy_b, greedy(), drawn_b),
                        lambda: drawn_b)

  # An all-greedy batch skips the vocabulary sorts of the filters and the draw.
  return jax.lax.cond(jnp.all(sp.greedy_b), greedy, draw)
