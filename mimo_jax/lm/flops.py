"""Analytic matmul FLOPs of the speech LM's steps: what MFU is measured on (the training
metrics) and what the planner's jaxpr counts are checked against."""

from __future__ import annotations

from mimo_jax.config import LossConfig, MimoAudioConfig, StackConfig
from mimo_jax.lm import model


def stack_matmul_params(cfg: StackConfig) -> int:
  """Weights of one stack that take part in matrix products (norm gains and biases do not)."""
  attn = cfg.d_model * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
  return cfg.n_layers * (attn + 3 * cfg.d_model * cfg.d_ff)


def stack_attention_flops(cfg: StackConfig, sequences: int, length: int) -> float:
  """Forward FLOPs of q·k and p·v over dense [length, length] scores (masked entries included,
  as the XLA attention computes them)."""
  return 4.0 * cfg.n_layers * sequences * length * length * cfg.n_heads * cfg.head_dim


def backbone_train_flops(cfg: MimoAudioConfig, sequences: int, length: int) -> float:
  """Analytic FLOPs of forward + backward of the backbone and lm_head without rematerialisation:
  6 · N · tokens over the matmul weights N, plus 3x the attention scores."""
  n = stack_matmul_params(cfg.backbone) + cfg.hidden_size * cfg.vocab_size
  return 6.0 * n * sequences * length + 3 * stack_attention_flops(cfg.backbone, sequences, length)


def train_flops(cfg: MimoAudioConfig, loss_cfg: LossConfig, sequences: int,
                positions: int) -> float:
  """Analytic forward + backward FLOPs of a MiMo-Audio train step over `sequences` x `positions`
  LLM positions: the backbone on every position; the patch encoder and, with audio losses, the
  patch decoder over its g + max-delay steps on every position (an upper bound: text positions
  are masked) or, with `loss_cfg.audio_capacity`, on that many slots per sequence."""
  g = cfg.group_size
  patches = sequences * model.audio_capacity(positions, loss_cfg.audio_capacity)
  enc = cfg.patch_encoder
  flops = backbone_train_flops(cfg, sequences, positions)
  enc_n = stack_matmul_params(enc) + g * enc.d_model * cfg.hidden_size
  flops += 6.0 * enc_n * patches * g + 3 * stack_attention_flops(enc, patches, g)
  if loss_cfg.trains_audio:
    dec = cfg.patch_decoder
    steps = g + max(cfg.delay_pattern)
    dec_n = stack_matmul_params(dec)
    heads = dec.d_model * sum(cfg.speech_vocab_size) * g / steps  # heads read g of the steps
    flops += 6.0 * cfg.hidden_size * dec.d_model * patches
    flops += 6.0 * (dec_n + heads) * patches * steps + 3 * stack_attention_flops(dec, patches,
                                                                                 steps)
    if cfg.input_local_dim != cfg.local_dim:
      flops += 6.0 * enc.d_model * dec.d_model * patches * steps
  return flops


def decode_step_flops(cfg: MimoAudioConfig, rows: int, cache_len: int) -> float:
  """Analytic FLOPs of one generation step of `rows` rows: the text head on the last hidden
  state, the patch decoder's g + max-delay cached steps (all 8 heads at every step), and the new
  position through the patch encoder and the backbone, attending over the whole preallocated
  cache (the XLA attention computes masked slots too)."""
  g, bb, enc, dec = cfg.group_size, cfg.backbone, cfg.patch_encoder, cfg.patch_decoder
  steps = g + max(cfg.delay_pattern)
  flops = 2.0 * cfg.hidden_size * cfg.vocab_size + 2.0 * cfg.hidden_size * dec.d_model
  # The c heads run as one batch padded to the widest audio vocabulary (generate.decode_patch).
  heads = dec.d_model * cfg.audio_channels * max(cfg.speech_vocab_size)
  flops += 2.0 * steps * (stack_matmul_params(dec) + heads)
  flops += stack_attention_flops(dec, 1, steps)  # s one-token queries over s slots
  if cfg.input_local_dim != cfg.local_dim:
    flops += 2.0 * steps * enc.d_model * dec.d_model
  flops += 2.0 * g * stack_matmul_params(enc) + stack_attention_flops(enc, 1, g)
  flops += 2.0 * g * enc.d_model * cfg.hidden_size
  flops += 2.0 * stack_matmul_params(bb) + 4.0 * bb.n_layers * cache_len * bb.n_heads * bb.head_dim
  return rows * flops
