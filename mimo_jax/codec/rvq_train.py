"""Training-time residual vector quantisation: EMA codebooks, k-means init, dead-code replacement.

Axis letters: b batch, t time (25 Hz), d model width, q stage, k codeword, n flattened frames.

One jitted function, `train_quantize`, does what the official (EnCodec-derived) `EuclideanCodebook`
does in training mode, for all stages in one `lax.scan`:

1. k-means initialisation (`kmeans_iters` Lloyd iterations from randomly drawn batch vectors) of a
   stage whose `inited` flag is 0, on the first batch it sees (a `lax.cond`: later steps skip it);
2. nearest-codeword assignment (`rvq.nearest_codeword`, the inference code);
3. EMA statistics: cluster_size <- decay * cluster_size + (1 - decay) * counts,
   embed_avg <- decay * embed_avg + (1 - decay) * sum of assigned vectors,
   embed <- embed_avg / Laplace-smoothed cluster_size (epsilon over the stage's real codewords);
4. dead-code replacement: every real codeword whose EMA count is below `threshold` is replaced by
   a vector of the current batch (the stage's residual), drawn without replacement.

Two departures from the official code, both because its behaviour there is accidental:
- The official k-means init stores embed_avg = means (not means * counts) beside
  cluster_size = counts, so the first EMA step divides the means by their counts. Here
  embed_avg = means * counts, so embed_avg / cluster_size = means as intended.
- The official replacement writes only `embed` and is overwritten by the EMA normalisation in the
  same step, so it never takes effect. Here replacement happens after the EMA update and also sets
  embed_avg = vector * threshold and cluster_size = threshold (as vector-quantize-pytorch does), so
  the new codeword survives: a code that then gets fewer than `threshold` hits per step decays
  below the threshold and is drawn again.

Gradients: the straight-through estimator gives quantized = x + stop_gradient(sum of codewords - x);
every stage's residual after the first is a constant (as in the official code, where each stage's
output is x_i + (q_i - x_i).detach()), so the commitment loss, mean over stages of
MSE(stop_gradient(q_i), residual_i), reaches the encoder through the first stage only.

Sharding: statistics are plain `jnp.sum`s over the global (sharded) batch, which XLA turns into
all-reduces, and all random draws use one replicated key folded with the stage index, so every
device holds the same codebooks. Padding frames (mask 0) count nowhere and are never drawn.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from mimo_jax.codec import rvq
from mimo_jax.codec.config import CodecConfig


@dataclasses.dataclass(frozen=True)
class EmaConfig:
  """Codebook learning constants (the official defaults; threshold from the codec config)."""
  decay: float = 0.99
  epsilon: float = 1e-5
  kmeans_iters: int = 50
  threshold: float = 2.0

  @classmethod
  def from_codec(cls, cfg: CodecConfig, **changes) -> EmaConfig:
    return cls(threshold=float(cfg.threshold_ema_dead_code)).replace(**changes)

  def replace(self, **changes) -> EmaConfig:
    return dataclasses.replace(self, **changes)


def sample_rows(key: jax.Array, x_nd: jax.Array, mask_n: jax.Array, num: int) -> jax.Array:
  """`num` rows of x drawn uniformly among the valid ones, without replacement while there are
  enough valid rows (then cycling through a random order of them) -> [num, d]."""
  score_n = jnp.where(mask_n, jax.random.uniform(key, mask_n.shape), -1.0)
  order_n = jnp.argsort(-score_n)  # valid rows first, in random order
  n_valid = jnp.maximum(jnp.sum(mask_n.astype(jnp.int32)), 1)
  return x_nd[order_n[jnp.arange(num) % n_valid]]


def _assign_stats(x_nd, mask_n, embed_kd, valid_k):
  """Codes [n], per-codeword counts [k] and vector sums [k, d] of the valid rows."""
  codes_n = rvq.nearest_codeword(x_nd, embed_kd, valid_k)
  onehot_nk = jax.nn.one_hot(codes_n, embed_kd.shape[0], dtype=jnp.float32) * mask_n[:, None]
  return codes_n, jnp.sum(onehot_nk, axis=0), jnp.einsum("nk,nd->kd", onehot_nk, x_nd)


def kmeans(key: jax.Array, x_nd: jax.Array, mask_n: jax.Array, valid_k: jax.Array,
           iters: int) -> tuple[jax.Array, jax.Array]:
  """Lloyd's k-means over the valid rows from randomly drawn rows: means [k, d] (zero on padding
  codewords) and the counts [k] of the last assignment. Empty clusters keep their mean."""
  means_kd = sample_rows(key, x_nd, mask_n, valid_k.shape[0]) * valid_k[:, None]

  def body(_, carry):
    means_kd, _ = carry
    _, counts_k, sums_kd = _assign_stats(x_nd, mask_n, means_kd, valid_k)
    new_kd = sums_kd / jnp.maximum(counts_k, 1.0)[:, None]
    return jnp.where((counts_k > 0)[:, None], new_kd, means_kd), counts_k

  return jax.lax.fori_loop(0, iters, body, (means_kd, jnp.zeros(valid_k.shape, jnp.float32)))


def ema_step(codebook: dict, x_nd: jax.Array, mask_n: jax.Array, codes_n: jax.Array,
             valid_k: jax.Array, key: jax.Array, ecfg: EmaConfig) -> tuple[dict, jax.Array]:
  """One stage's EMA update and dead-code replacement given this batch's codes.

  codebook: {"embed": [k, d], "embed_avg": [k, d], "cluster_size": [k]} (fp32).
  Returns the new codebook and the [k] bool mask of the codewords replaced.
  """
  d = ecfg.decay
  onehot_nk = jax.nn.one_hot(codes_n, valid_k.shape[0], dtype=jnp.float32) * mask_n[:, None]
  cluster_k = d * codebook["cluster_size"] + (1 - d) * jnp.sum(onehot_nk, axis=0)
  embed_avg_kd = d * codebook["embed_avg"] + (1 - d) * jnp.einsum("nk,nd->kd", onehot_nk, x_nd)
  # Laplace smoothing over the stage's real codewords only (padding rows have zero counts).
  total = jnp.sum(cluster_k)
  n_codes = jnp.sum(valid_k.astype(jnp.float32))
  smoothed_k = (cluster_k + ecfg.epsilon) / (total + n_codes * ecfg.epsilon) * total
  embed_kd = jnp.where(valid_k[:, None], embed_avg_kd / smoothed_k[:, None], 0.0)

  dead_k = valid_k & (cluster_k < ecfg.threshold)
  fresh_kd = sample_rows(key, x_nd, mask_n, valid_k.shape[0])
  new = {"embed": jnp.where(dead_k[:, None], fresh_kd, embed_kd),
         "embed_avg": jnp.where(dead_k[:, None], fresh_kd * ecfg.threshold, embed_avg_kd),
         "cluster_size": jnp.where(dead_k, ecfg.threshold, cluster_k)}
  return new, dead_k


def _perplexity(counts_k: jax.Array) -> jax.Array:
  p_k = counts_k / jnp.maximum(jnp.sum(counts_k), 1.0)
  return jnp.exp(-jnp.sum(jnp.where(p_k > 0, p_k * jnp.log(jnp.where(p_k > 0, p_k, 1.0)), 0.0)))


@functools.partial(jax.jit, static_argnums=(1, 5, 6))
def train_quantize(quantizer: dict, cfg: CodecConfig, x_btd: jax.Array, mask_bt: jax.Array,
                   key: jax.Array, ecfg: EmaConfig, update: bool = True):
  """Quantises features with all stages and (if `update`) learns the codebooks from them.

  x_btd: encoder features [b, t, d]; mask_bt: valid frames; key: replicated PRNG key of the step.
  Returns (quantized_btd with straight-through gradients, codes_btq, commitment loss (scalar),
  new quantizer tree, stats) where stats holds per-stage [q] arrays: `perplexity` and `usage`
  (fraction of real codewords hit) of this batch's codes and `replaced` (dead codes replaced).
  With update=False the quantizer is returned unchanged (frozen RVQ, stage 2).
  """
  n_q = cfg.num_quantizers
  b, t, dim = x_btd.shape
  x_nd = x_btd.astype(jnp.float32).reshape(b * t, dim)
  mask_n = mask_bt.reshape(b * t).astype(bool)
  weight_n = mask_n.astype(jnp.float32)
  valid_qk = rvq.valid_codewords(cfg, n_q)
  buffers = {name: quantizer[name][:n_q].astype(jnp.float32)
             for name in ("embed", "embed_avg", "cluster_size")}
  inited_q = quantizer["inited"][:n_q, 0]
  keys_q = jax.vmap(lambda q: jax.random.fold_in(key, q))(jnp.arange(n_q))

  def stage(residual_nd, xs):
    book, inited, valid_k, key_q = xs
    init_key, replace_key = jax.random.split(key_q)
    if update:
      def init(book):
        means_kd, counts_k = kmeans(init_key, jax.lax.stop_gradient(residual_nd), mask_n, valid_k,
                                    ecfg.kmeans_iters)
        return {"embed": means_kd, "embed_avg": means_kd * counts_k[:, None],
                "cluster_size": counts_k}
      book = jax.lax.cond(inited > 0, lambda book: book, init, book)
    target_nd = jax.lax.stop_gradient(residual_nd)
    codes_n = rvq.nearest_codeword(target_nd, book["embed"], valid_k)
    q_nd = book["embed"][codes_n]
    sq_err_n = jnp.sum(jnp.square(q_nd - residual_nd), axis=-1)
    commit = jnp.sum(sq_err_n * weight_n) / (jnp.maximum(jnp.sum(weight_n), 1.0) * dim)
    counts_k = jnp.sum(jax.nn.one_hot(codes_n, valid_k.shape[0]) * weight_n[:, None], axis=0)
    if update:
      book, replaced_k = ema_step(book, target_nd, mask_n, codes_n, valid_k, replace_key, ecfg)
    else:
      replaced_k = jnp.zeros_like(valid_k)
    stats = {"perplexity": _perplexity(counts_k),
             "usage": jnp.sum(counts_k > 0) / jnp.sum(valid_k),
             "replaced": jnp.sum(replaced_k)}
    return target_nd - q_nd, (q_nd, codes_n, commit, book, stats)

  _, (q_qnd, codes_qn, commit_q, books, stats) = jax.lax.scan(
      stage, x_nd, (buffers, inited_q, valid_qk, keys_q))
  sum_nd = jnp.sum(q_qnd, axis=0)
  quantized_nd = x_nd + jax.lax.stop_gradient(sum_nd - x_nd)
  new_quantizer = dict(quantizer)
  if update:
    new_quantizer.update({name: quantizer[name].at[:n_q].set(books[name].astype(
        quantizer[name].dtype)) for name in books})
    new_quantizer["inited"] = jnp.ones_like(quantizer["inited"])
  codes_btq = jnp.moveaxis(codes_qn, 0, -1).reshape(b, t, n_q)
  return (quantized_nd.reshape(b, t, dim).astype(x_btd.dtype), codes_btq, jnp.mean(commit_q),
          new_quantizer, stats)
