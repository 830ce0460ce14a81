"""FLOPs of a step, counted from its jaxpr, and the analytic count they are checked against.

XLA's `cost_analysis()` on TPU targets counts a loop body once, so a scanned 36-layer stack
reports about 1/36 of its work. Counting the jaxpr instead, each `scan` body is multiplied by its
trip count, a `cond` takes its most expensive branch, and rematerialised (`checkpoint`) regions
count as often as they appear, so a rematerialised step counts its recomputation too. Only matrix
products (`dot_general`) are counted: they are what the MXU does and what MFU is measured on;
elementwise work is a few percent at LLM widths.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core

from mimo_jax.config import MimoAudioConfig, StackConfig


@dataclasses.dataclass(frozen=True)
class FlopCount:
  flops: float
  # `while` loops whose trip count the jaxpr does not fix: counted once each (an undercount).
  unbounded_loops: int = 0


def _sub_jaxprs(value: Any) -> list:
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _dot_flops(eqn) -> float:
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
  # batch x contract x lhs_free x rhs_free multiply-adds.
  return 2.0 * math.prod(lhs) * math.prod(rhs_free)


def _count(jaxpr) -> tuple[float, int]:
  flops, unbounded = 0.0, 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      flops += _dot_flops(eqn)
      continue
    if name == "cond":
      counts = [_count(j) for j in _sub_jaxprs(eqn.params["branches"])]
      flops += max(c[0] for c in counts)
      unbounded += max(c[1] for c in counts)
      continue
    if name == "while":
      body_flops, body_unbounded = _count(eqn.params["body_jaxpr"].jaxpr)
      cond_flops, cond_unbounded = _count(eqn.params["cond_jaxpr"].jaxpr)
      flops += body_flops + cond_flops
      unbounded += 1 + body_unbounded + cond_unbounded
      continue
    trips = eqn.params["length"] if name == "scan" else 1
    for sub in (j for v in eqn.params.values() for j in _sub_jaxprs(v)):
      sub_flops, sub_unbounded = _count(sub)
      flops += trips * sub_flops
      unbounded += sub_unbounded
  return flops, unbounded


def count_flops(fn: Callable, *args: Any) -> FlopCount:
  """Matmul FLOPs of one call of fn(*args); args may be ShapeDtypeStructs (nothing runs)."""
  closed = jax.make_jaxpr(fn)(*args)
  flops, unbounded = _count(closed.jaxpr)
  return FlopCount(flops, unbounded)


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


def mimo_train_flops(cfg: MimoAudioConfig, sequences: int, positions: int,
                     trains_audio: bool) -> float:
  """Analytic forward + backward FLOPs of a MiMo-Audio train step over `sequences` x `positions`
  LLM positions, every position running the patch encoder (an upper bound: text positions need
  not) and, with audio losses, the patch decoder over its g + max-delay steps."""
  g = cfg.group_size
  patches = sequences * positions
  enc = cfg.patch_encoder
  flops = backbone_train_flops(cfg, sequences, positions)
  enc_n = stack_matmul_params(enc) + g * enc.d_model * cfg.hidden_size
  flops += 6.0 * enc_n * patches * g + 3 * stack_attention_flops(enc, patches, g)
  if trains_audio:
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
