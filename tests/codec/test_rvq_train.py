"""EMA / k-means RVQ training against an independent NumPy reference, dead codes, STE, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimo_jax import sharding
from mimo_jax.codec import config as codec_config
from mimo_jax.codec import rvq, rvq_train

# Three stages of 16, 8, 8 codewords (stacked and padded to 16), width 8.
CFG = codec_config.tiny(d_model=16, num_quantizers=3, codebook_size=(16, 8))
B, T = 4, 12


def _batch(seed: int):
  rng = np.random.default_rng(seed)
  x_btd = rng.standard_normal((B, T, CFG.d_model)).astype(np.float32)
  mask_bt = np.ones((B, T), bool)
  mask_bt[1, 9:] = False  # a padded row
  mask_bt[3, 5:] = False
  return x_btd, mask_bt


def _quantizer(seed: int, cluster_size: float = 5.0, inited: float = 1.0) -> dict:
  rng = np.random.default_rng(seed)
  valid_qk = np.asarray(rvq.valid_codewords(CFG, CFG.num_quantizers))
  embed = rng.standard_normal((3, 16, CFG.d_model)).astype(np.float32) * valid_qk[..., None]
  cluster = np.full((3, 16), cluster_size, np.float32) * valid_qk
  return {"embed": embed, "embed_avg": embed * cluster[..., None], "cluster_size": cluster,
          "inited": np.full((3, 1), inited, np.float32)}


def _numpy_step(quantizer: dict, x_btd, mask_bt, ecfg, sampled_q=None):
  """The EMA algorithm written out in float64 NumPy (sampled_q: the replacement draws per stage)."""
  q = {k: np.asarray(v, np.float64).copy() for k, v in quantizer.items()}
  x_nd = np.asarray(x_btd, np.float64).reshape(-1, CFG.d_model)
  mask_n = np.asarray(mask_bt).reshape(-1)
  residual = x_nd.copy()
  codes, commits, dead = [], [], []
  for i, size in enumerate(CFG.codebook_sizes):
    embed = q["embed"][i, :size]
    dist = ((residual[:, None, :] - embed[None]) ** 2).sum(-1)
    code = dist.argmin(-1)
    chosen = embed[code]
    commits.append(((chosen - residual) ** 2).sum(-1)[mask_n].sum() / (mask_n.sum() * CFG.d_model))
    onehot = np.eye(size)[code] * mask_n[:, None]
    cluster = ecfg.decay * q["cluster_size"][i, :size] + (1 - ecfg.decay) * onehot.sum(0)
    avg = ecfg.decay * q["embed_avg"][i, :size] + (1 - ecfg.decay) * onehot.T @ residual
    smoothed = (cluster + ecfg.epsilon) / (cluster.sum() + size * ecfg.epsilon) * cluster.sum()
    new_embed = avg / smoothed[:, None]
    is_dead = cluster < ecfg.threshold
    if is_dead.any():
      new_embed[is_dead] = sampled_q[i][:size][is_dead]
      avg[is_dead] = sampled_q[i][:size][is_dead] * ecfg.threshold
      cluster[is_dead] = ecfg.threshold
    q["embed"][i, :size], q["embed_avg"][i, :size], q["cluster_size"][i, :size] = (
        new_embed, avg, cluster)
    codes.append(code)
    dead.append(is_dead)
    residual = residual - chosen
  return q, np.stack(codes, -1).reshape(B, T, -1), float(np.mean(commits)), dead


def _compare(actual: dict, expected: dict):
  for name in ("embed", "embed_avg", "cluster_size"):
    np.testing.assert_allclose(np.asarray(actual[name]), expected[name], rtol=1e-5, atol=1e-5,
                               err_msg=name)


def test_ema_update_matches_numpy_step_for_step():
  ecfg = rvq_train.EmaConfig(threshold=0.0)
  quantizer = _quantizer(0)
  reference = {k: np.asarray(v) for k, v in quantizer.items()}
  key = jax.random.key(0)
  for step in range(5):
    x_btd, mask_bt = _batch(10 + step % 2)
    _, codes, commit, quantizer, stats = rvq_train.train_quantize(
        quantizer, CFG, x_btd, mask_bt, jax.random.fold_in(key, step), ecfg)
    reference, ref_codes, ref_commit, _ = _numpy_step(reference, x_btd, mask_bt, ecfg)
    np.testing.assert_array_equal(np.asarray(codes)[mask_bt], ref_codes[mask_bt])
    np.testing.assert_allclose(float(commit), ref_commit, rtol=1e-5)
    _compare(quantizer, reference)
    assert np.all(np.asarray(stats["replaced"]) == 0)
  # Padding codewords of the 8-entry stages stay exactly zero.
  assert not np.any(np.asarray(quantizer["embed"])[1:, 8:])


def test_dead_codes_replaced_exactly_below_threshold():
  ecfg = rvq_train.EmaConfig(threshold=2.0)
  quantizer = _quantizer(1)
  # EMA counts: 5 -> stays >= 4.95; 1 -> below 2 unless the code gets many hits in this batch.
  low = np.zeros((3, 16), bool)
  low[0, [1, 4, 7]] = low[1, [0, 5]] = low[2, 3] = True
  quantizer["cluster_size"] = np.where(low, 1.0, quantizer["cluster_size"]).astype(np.float32)
  x_btd, mask_bt = _batch(3)
  key = jax.random.key(7)
  _, _, _, new, stats = rvq_train.train_quantize(quantizer, CFG, x_btd, mask_bt, key, ecfg)

  # The draws: stage residuals of this batch (float64 reference residuals give the same rows).
  q_keys = [jax.random.split(jax.random.fold_in(key, i))[1] for i in range(3)]
  _, codes, _, _ = _numpy_step(quantizer, x_btd, mask_bt, rvq_train.EmaConfig(threshold=0.0))
  x_nd = x_btd.reshape(-1, CFG.d_model).astype(np.float64)
  valid_n = mask_bt.reshape(-1)
  residuals, residual = [], x_nd.copy()
  for i in range(3):
    residuals.append(residual.copy())
    residual = residual - np.asarray(quantizer["embed"])[i][codes.reshape(-1, 3)[:, i]]
  sampled = [np.asarray(rvq_train.sample_rows(q_keys[i], jnp.asarray(residuals[i], jnp.float32),
                                              jnp.asarray(valid_n), 16)) for i in range(3)]
  reference, _, _, dead = _numpy_step(quantizer, x_btd, mask_bt, ecfg, sampled)
  _compare(new, reference)
  for i in range(3):
    size = CFG.codebook_sizes[i]
    # counts 1 -> at most 0.99 + 0.01 * 96 frames < 2; counts 5 -> at least 4.95.
    assert dead[i].tolist() == low[i, :size].tolist()
    assert int(stats["replaced"][i]) == dead[i].sum() > 0
    # Replaced rows are distinct valid frames of that stage's residual; the rest are EMA means.
    rows = np.asarray(new["embed"])[i, :size][dead[i]]
    matches = [np.flatnonzero(np.all(np.abs(residuals[i] - r) < 1e-5, -1)) for r in rows]
    assert all(len(m) >= 1 and valid_n[m].all() for m in matches)
    assert len({int(m[0]) for m in matches}) == len(matches)
  assert not np.any(np.asarray(new["embed"])[1:, 8:])


def test_sample_rows_draws_valid_rows_without_replacement():
  x_nd = jnp.arange(20, dtype=jnp.float32)[:, None]
  mask_n = jnp.arange(20) % 3 != 0  # 13 valid rows
  drawn = np.asarray(rvq_train.sample_rows(jax.random.key(0), x_nd, mask_n, 10))[:, 0]
  assert len(set(drawn)) == 10 and all(v % 3 != 0 for v in drawn)
  drawn = np.asarray(rvq_train.sample_rows(jax.random.key(1), x_nd, mask_n, 26))[:, 0]
  assert sorted(drawn[:13]) == sorted(drawn[13:]) == [v for v in range(20) if v % 3]


def test_kmeans_matches_numpy_lloyd_and_init_keeps_means():
  x_btd, mask_bt = _batch(5)
  x_nd = x_btd.reshape(-1, CFG.d_model)
  mask_n = mask_bt.reshape(-1)
  valid_k = np.arange(16) < 8
  key = jax.random.key(3)
  means, counts = rvq_train.kmeans(key, jnp.asarray(x_nd), jnp.asarray(mask_n),
                                   jnp.asarray(valid_k), 6)
  ref = np.asarray(rvq_train.sample_rows(key, jnp.asarray(x_nd), jnp.asarray(mask_n), 16),
                   np.float64)[:8]
  data = x_nd[mask_n].astype(np.float64)
  for _ in range(6):
    code = ((data[:, None] - ref[None]) ** 2).sum(-1).argmin(-1)
    ref_counts = np.bincount(code, minlength=8)
    sums = np.eye(8)[code].T @ data
    ref = np.where(ref_counts[:, None] > 0, sums / np.maximum(ref_counts, 1)[:, None], ref)
  np.testing.assert_allclose(np.asarray(means)[:8], ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(counts)[:8], ref_counts)
  assert not np.any(np.asarray(means)[8:]) and not np.any(np.asarray(counts)[8:])

  # Inside the step: un-inited stages are k-means initialised; embed_avg = means * counts, so an
  # EMA step on the same (converged) batch leaves live codewords where k-means put them.
  quantizer = _quantizer(2, inited=0.0)
  ecfg = rvq_train.EmaConfig(kmeans_iters=50, threshold=0.0)
  _, _, _, new, _ = rvq_train.train_quantize(quantizer, CFG, x_btd, mask_bt, key, ecfg)
  assert np.all(np.asarray(new["inited"]) == 1)
  init_means, init_counts = rvq_train.kmeans(
      jax.random.split(jax.random.fold_in(key, 0))[0], jnp.asarray(x_nd), jnp.asarray(mask_n),
      jnp.arange(16) < 16, 50)
  live = np.asarray(init_counts) > 0
  np.testing.assert_allclose(np.asarray(new["embed"])[0][live], np.asarray(init_means)[live],
                             rtol=1e-4, atol=1e-4)


def test_straight_through_gradients_and_frozen_mode():
  quantizer = _quantizer(4)
  x_btd, mask_bt = _batch(6)
  ecfg = rvq_train.EmaConfig()
  w_btd = np.random.default_rng(0).standard_normal(x_btd.shape).astype(np.float32)

  def loss(x_btd):
    quantized, _, commit, _, _ = rvq_train.train_quantize(quantizer, CFG, x_btd, mask_bt,
                                                          jax.random.key(0), ecfg)
    return jnp.sum(quantized * w_btd), commit

  grad_quantized = jax.grad(lambda x: loss(x)[0])(jnp.asarray(x_btd))
  np.testing.assert_allclose(np.asarray(grad_quantized), w_btd, rtol=1e-6)
  # Commitment: only the first stage's residual (x itself) carries gradient.
  grad_commit = np.asarray(jax.grad(lambda x: loss(x)[1])(jnp.asarray(x_btd)))
  codes0, q0 = rvq.quantize(quantizer, CFG, jnp.asarray(x_btd), 1)
  expected = 2 * (x_btd - np.asarray(q0)) * mask_bt[..., None] / (
      mask_bt.sum() * CFG.d_model * CFG.num_quantizers)
  np.testing.assert_allclose(grad_commit, expected, rtol=1e-5, atol=1e-7)

  # Frozen (update=False): codes equal inference codes, buffers untouched bit for bit.
  quantized, codes, _, same, _ = rvq_train.train_quantize(quantizer, CFG, x_btd, mask_bt,
                                                          jax.random.key(0), ecfg, False)
  ref_codes, ref_sum = rvq.quantize(quantizer, CFG, jnp.asarray(x_btd), CFG.num_quantizers)
  np.testing.assert_array_equal(np.asarray(codes), np.asarray(ref_codes))
  np.testing.assert_allclose(np.asarray(quantized), np.asarray(ref_sum), rtol=1e-5, atol=1e-5)
  for name in quantizer:
    np.testing.assert_array_equal(np.asarray(same[name]), quantizer[name])


@pytest.mark.parametrize("flag", ["data:2,fsdp:4,tensor:1"])
def test_sharded_update_equals_single_device(flag):
  """Two steps (k-means init, EMA, dead-code replacement) with the batch over 8 devices."""
  ecfg = rvq_train.EmaConfig(kmeans_iters=10, threshold=2.0)
  x_btd, mask_bt = _batch(8)
  x_btd = np.concatenate([x_btd, x_btd[::-1] * 0.5])  # batch 8: one row per device
  mask_bt = np.concatenate([mask_bt, mask_bt[::-1]])

  def two_steps(quantizer, x_btd, mask_bt):
    outs = []
    for step in range(2):
      _, codes, commit, quantizer, stats = rvq_train.train_quantize(
          quantizer, CFG, x_btd, mask_bt, jax.random.key(step), ecfg)
      outs.append((codes, commit, stats["replaced"]))
    return quantizer, outs

  quantizer = _quantizer(5, inited=0.0)
  expected = jax.jit(two_steps)(quantizer, x_btd, mask_bt)
  mesh = sharding.make_mesh(flag)
  rows = jax.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length", None)))
  rows2 = jax.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
  with jax.set_mesh(mesh):
    actual = jax.jit(two_steps)(quantizer, jax.device_put(x_btd, rows),
                                jax.device_put(mask_bt, rows2))
  assert len(jax.device_put(x_btd, rows).sharding.device_set) == 8
  for (codes, commit, replaced), (ref_codes, ref_commit, ref_replaced) in zip(actual[1],
                                                                             expected[1]):
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(ref_codes))
    np.testing.assert_array_equal(np.asarray(replaced), np.asarray(ref_replaced))
    np.testing.assert_allclose(float(commit), float(ref_commit), rtol=1e-5)
  assert int(np.sum(np.asarray(expected[1][0][2]))) > 0  # replacement did fire
  for name in ("embed", "embed_avg", "cluster_size", "inited"):
    np.testing.assert_allclose(np.asarray(actual[0][name]), np.asarray(expected[0][name]),
                               rtol=1e-5, atol=1e-5, err_msg=name)
