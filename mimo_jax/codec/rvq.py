"""Residual vector quantiser (official `ResidualVectorQuantizer`, Euclidean codebooks).

Axis letters: b batch, t time (25 Hz), d model width, q stage, k codeword.

Codebooks of all stages are stacked into one [q, k_max, d] array (stages with fewer codewords are
zero-padded and their padding is masked out of the distances), so encoding is a `lax.scan` over
stages. `embed_avg`, `cluster_size` and `inited` are the EMA statistics of codebook training:
they live in the same tree so that checkpoints round-trip, but are state, not trainable params.
Distances are always computed in float32, as the official code forces.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mimo_jax.codec.config import CodecConfig
from mimo_jax.convert.names import ConversionError, to_host
from mimo_jax.convert.safetensors_io import LazyTensor
from mimo_jax.nn.params import ParamSpec

# Names of the official per-stage tensors: encoder.quantizer.vq.layers.{i}._codebook.{leaf}.
OFFICIAL_TEMPLATE = "encoder.quantizer.vq.layers.{}._codebook.{}"
STATE_LEAVES = ("embed", "embed_avg", "cluster_size", "inited")


def quantizer_specs(cfg: CodecConfig) -> dict:
  q, k, d = cfg.num_quantizers, max(cfg.codebook_sizes), cfg.d_model
  return {"embed": ParamSpec((q, k, d), (None, None, None), "normal"),
          "embed_avg": ParamSpec((q, k, d), (None, None, None), "normal"),
          "cluster_size": ParamSpec((q, k), (None, None), "zeros"),
          "inited": ParamSpec((q, 1), (None, None), "zeros")}


def valid_codewords(cfg: CodecConfig, n_q: int) -> jax.Array:
  """[n_q, k_max] bool: which rows of the stacked codebooks are real codewords (not padding)."""
  sizes_q = np.asarray(cfg.codebook_sizes[:n_q])
  return jnp.asarray(np.arange(max(cfg.codebook_sizes))[None, :] < sizes_q[:, None])


def nearest_codeword(x_nd: jax.Array, embed_kd: jax.Array, valid_k: jax.Array) -> jax.Array:
  """Index (int32) of the nearest valid codeword of each vector x [..., d] -> [...] (fp32 in)."""
  # Same expansion as the official code: |x|^2 - 2 x.e + |e|^2.
  dist_nk = (jnp.sum(jnp.square(x_nd), axis=-1, keepdims=True)
             - 2 * jnp.einsum("...d,kd->...k", x_nd, embed_kd)
             + jnp.sum(jnp.square(embed_kd), axis=-1))
  return jnp.argmin(jnp.where(valid_k, dist_nk, jnp.inf), axis=-1).astype(jnp.int32)


def quantize(quantizer: dict, cfg: CodecConfig, x_btd: jax.Array,
             n_q: int) -> tuple[jax.Array, jax.Array]:
  """Codes [b, t, n_q] (int32) of the first n_q stages and the quantised sum [b, t, d]."""
  _check_n_q(cfg, n_q)
  embed_qkd = quantizer["embed"][:n_q].astype(jnp.float32)

  def stage(residual_btd, xs):
    embed_kd, valid_k = xs
    codes_bt = nearest_codeword(residual_btd, embed_kd, valid_k)
    return residual_btd - embed_kd[codes_bt], codes_bt

  x_btd = x_btd.astype(jnp.float32)
  residual_btd, codes_qbt = jax.lax.scan(stage, x_btd, (embed_qkd, valid_codewords(cfg, n_q)))
  return jnp.moveaxis(codes_qbt, 0, -1), x_btd - residual_btd


def dequantize(quantizer: dict, cfg: CodecConfig, codes_btq: jax.Array) -> jax.Array:
  """Sum of the selected codewords of stages 0..n_q-1 ([b, t, n_q] codes -> [b, t, d], fp32)."""
  n_q = codes_btq.shape[-1]
  _check_n_q(cfg, n_q)
  embed_qkd = quantizer["embed"][:n_q].astype(jnp.float32)
  picked_btqd = embed_qkd[jnp.arange(n_q), codes_btq]
  return jnp.sum(picked_btqd, axis=-2)


def _check_n_q(cfg: CodecConfig, n_q: int) -> None:
  if not 1 <= n_q <= cfg.num_quantizers:
    raise ValueError(f"n_q: must be in [1, num_quantizers={cfg.num_quantizers}], got {n_q}")


def to_official(quantizer: dict, cfg: CodecConfig) -> dict[str, LazyTensor]:
  """The official per-stage tensors, each read from the stacked books only when written."""
  shapes = official_shapes(cfg)
  out = {}
  for i, size in enumerate(cfg.codebook_sizes):
    for leaf in STATE_LEAVES:
      name = OFFICIAL_TEMPLATE.format(i, leaf)
      rows = None if leaf == "inited" else size  # the padding rows are ours, not the model's
      out[name] = LazyTensor(shapes[name], functools.partial(_stage, quantizer[leaf], i, rows))
  return out


def _stage(stacked, stage: int, rows: int | None) -> np.ndarray:
  array = to_host(stacked[stage])
  return array if rows is None else array[:rows]


def from_official(tensors, cfg: CodecConfig) -> dict:
  """Stacks the per-stage official tensors, zero-padding smaller codebooks to the largest."""
  k_max = max(cfg.codebook_sizes)
  missing = [name for name in official_shapes(cfg) if name not in tensors]
  if missing:
    raise ConversionError(f"{len(missing)} quantizer tensor(s) missing from the checkpoint, e.g. "
                          f"{missing[:5]}")
  out = {}
  for leaf in STATE_LEAVES:
    pieces = []
    for i, size in enumerate(cfg.codebook_sizes):
      name = OFFICIAL_TEMPLATE.format(i, leaf)
      array = np.asarray(tensors[name], np.float32)
      expected = official_shapes(cfg)[name]
      if array.shape != expected:
        raise ConversionError(f"{name}: shape {array.shape} in the checkpoint, the config expects "
                              f"{expected}")
      pad = [(0, 0)] * array.ndim if leaf == "inited" else [(0, k_max - size)] + [(0, 0)] * (
          array.ndim - 1)
      pieces.append(np.pad(array, pad))
    out[leaf] = np.stack(pieces)
  return out


def official_shapes(cfg: CodecConfig) -> dict[str, tuple[int, ...]]:
  shapes = {}
  for i, size in enumerate(cfg.codebook_sizes):
    shapes.update({OFFICIAL_TEMPLATE.format(i, "embed"): (size, cfg.d_model),
                   OFFICIAL_TEMPLATE.format(i, "embed_avg"): (size, cfg.d_model),
                   OFFICIAL_TEMPLATE.format(i, "cluster_size"): (size,),
                   OFFICIAL_TEMPLATE.format(i, "inited"): (1,)})
  return shapes
