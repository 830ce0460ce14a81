"""The audio-to-text (A2T) auxiliary decoder of codec stage 1 (spec §1.6).

Axis letters: b batch, t 25 Hz code frames, n text positions, d the decoder's width, c the codec's
width, v text vocabulary.

The released tokenizer was trained with L = 10 * L_A2T + L_recon + L_commit, where L_A2T is the
next-token cross-entropy of an auxiliary LLM, trained from scratch with the codec, that reads the
transcript from the quantised encoder output. It pushes the codes to carry what was said, not
only how it sounds. Its size and layout are not published: here it is a small causal Qwen2 stack
(`nn.stack`) whose sequence is the clip's quantised frames, projected to its width, followed by the
transcript: [q_1 .. q_T, <end>, x_1 .. x_{n-1}] predicting x_1 .. x_n, where x_n is <end>. Padding
frames and padding tokens sit in segment 0, so no real position attends to them, and text
positions continue from each clip's own last frame.

It exists for training only: its parameters live beside the codec in the training state (not in
`state["codec"]`), so exported tokenizer folders never contain them.

Batches carry the targets as "text" [b, n] int32 (transcript ids then the end id, zero padded)
and "text_lengths" [b] (valid ids, end included); `target_ids` builds one row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mimo_jax.config import ConfigError, StackConfig
from mimo_jax.nn.params import ParamSpec
from mimo_jax.nn.stack import stack_forward, stack_param_specs


@dataclasses.dataclass(frozen=True)
class A2TConfig:
  vocab_size: int  # the text tokenizer's ids
  end_id: int  # starts the text and ends the transcript (the tokenizer's <|endoftext|>)
  max_text_tokens: int = 64  # transcript tokens per clip (the end id comes on top)
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  d_ff: int = 128
  rope_theta: float = 10000.0

  def __post_init__(self):
    for name in ("vocab_size", "max_text_tokens", "d_model", "n_layers", "n_heads", "d_ff"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"a2t.{name}: must be a positive integer, got {value!r}")
    if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
      raise ConfigError(f"a2t.heads: {self.n_heads} heads must split d_model {self.d_model} "
                        f"into even head widths (RoPE)")
    if not 0 <= self.end_id < self.vocab_size:
      raise ConfigError(f"a2t.end_id: {self.end_id} is not an id of the {self.vocab_size}-id "
                        f"text vocabulary")

  @property
  def stack(self) -> StackConfig:
    return StackConfig(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                       n_kv_heads=self.n_heads, head_dim=self.d_model // self.n_heads,
                       d_ff=self.d_ff, rope_theta=self.rope_theta, norm_eps=1e-6, causal=True)


def a2t_specs(cfg: A2TConfig, codec_width: int) -> dict:
  d, v = cfg.d_model, cfg.vocab_size
  return {"audio_proj": {"kernel": ParamSpec((codec_width, d), ("embed", None)),
                         "bias": ParamSpec((d,), (None,), "zeros")},
          "embed_tokens": ParamSpec((v, d), ("vocab", "embed")),
          "stack": stack_param_specs(cfg.stack),
          "lm_head": {"kernel": ParamSpec((d, v), ("embed", "vocab"))}}


def target_ids(cfg: A2TConfig, transcript_ids: np.ndarray) -> tuple[np.ndarray, int]:
  """One batch row: (transcript ids + end id, zero padded to max_text_tokens + 1; valid count).
  The caller checks that the transcript is 1..max_text_tokens ids long."""
  row = np.zeros((cfg.max_text_tokens + 1,), np.int32)
  row[:len(transcript_ids)] = transcript_ids
  row[len(transcript_ids)] = cfg.end_id
  return row, len(transcript_ids) + 1


def a2t_loss(params: dict, cfg: A2TConfig, quantized_btc: jax.Array, lengths25_b: jax.Array,
             text_bn: jax.Array, text_lengths_b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean next-token cross-entropy over the valid text targets, their greedy accuracy)."""
  b, t, _ = quantized_btc.shape
  n = text_bn.shape[1]
  audio_btd = jnp.einsum("btc,cd->btd", quantized_btc, params["audio_proj"]["kernel"]) + \
      params["audio_proj"]["bias"]
  inputs_bn = jnp.concatenate([jnp.full((b, 1), cfg.end_id, text_bn.dtype), text_bn[:, :-1]], 1)
  x_btd = jnp.concatenate([audio_btd, params["embed_tokens"][inputs_bn]], axis=1)
  frame_t, token_n = jnp.arange(t), jnp.arange(n)
  audio_valid_bt = frame_t[None, :] < lengths25_b[:, None]
  text_valid_bn = token_n[None, :] < text_lengths_b[:, None]
  segment_ids_bt = jnp.concatenate([audio_valid_bt, text_valid_bn], axis=1).astype(jnp.int32)
  positions_bt = jnp.concatenate([jnp.broadcast_to(frame_t, (b, t)),
                                  lengths25_b[:, None] + token_n[None, :]], axis=1)
  h_btd, _ = stack_forward(params["stack"], x_btd, cfg.stack, positions_bt=positions_bt,
                           segment_ids_bt=segment_ids_bt)
  logits_bnv = jnp.einsum("bnd,dv->bnv", h_btd[:, t:], params["lm_head"]["kernel"])
  nll_bn = optax.softmax_cross_entropy_with_integer_labels(logits_bnv.astype(jnp.float32),
                                                           text_bn)
  weight_bn = text_valid_bn.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight_bn), 1.0)
  correct_bn = (jnp.argmax(logits_bnv, axis=-1) == text_bn).astype(jnp.float32)
  return jnp.sum(nll_bn * weight_bn) / count, jnp.sum(correct_bn * weight_bn) / count
