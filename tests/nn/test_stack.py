"""The scanned Qwen2 stack against HF transformers, packed sequences, remat policies and the
unrolled layer loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimo_jax.config import StackConfig
from mimo_jax.convert.names import to_official
from mimo_jax.nn.stack import init_cache, stack_forward, stack_param_specs
from tests.helpers import hf_stack, hf_stack_forward, random_params

# The shape of a (tiny) patch encoder / decoder: MHA, local dims.
LOCAL = StackConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, d_ff=64,
                    rope_theta=640000.0, norm_eps=1e-6, causal=True)
# A GQA shape like the backbone's.
GQA = StackConfig(d_model=48, n_layers=3, n_heads=6, n_kv_heads=2, head_dim=8, d_ff=96,
                  rope_theta=10000.0, norm_eps=1e-6, causal=True)


@pytest.mark.parametrize("cfg", [LOCAL, GQA], ids=["local", "gqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_stack_matches_transformers(cfg, causal):
  cfg = dataclasses.replace(cfg, causal=causal)
  params = random_params(stack_param_specs(cfg))
  x_btd = np.random.RandomState(0).randn(2, 11, cfg.d_model).astype(np.float32)
  ours, _ = jax.jit(lambda p, x: stack_forward(p, x, cfg))(params, x_btd)
  ref = hf_stack_forward(hf_stack(cfg, to_official(params)), x_btd, causal)
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_packed_sequences_equal_separate_runs(causal):
  cfg = dataclasses.replace(GQA, causal=causal)
  params = random_params(stack_param_specs(cfg))
  lengths = (5, 7, 4)  # three sequences packed into one row of 16
  x_btd = np.random.RandomState(1).randn(1, sum(lengths), cfg.d_model).astype(np.float32)
  segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])[None]
  positions = np.concatenate([np.arange(n) for n in lengths])[None]
  packed, _ = stack_forward(params, x_btd, cfg, positions_bt=jnp.asarray(positions),
                            segment_ids_bt=jnp.asarray(segment_ids))
  start = 0
  for n in lengths:
    alone, _ = stack_forward(params, x_btd[:, start:start + n], cfg)
    np.testing.assert_allclose(np.asarray(packed[:, start:start + n]), np.asarray(alone),
                               atol=1e-5, rtol=0)
    start += n


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_keep_values_and_gradients(policy):
  params = random_params(stack_param_specs(GQA))
  x_btd = jnp.asarray(np.random.RandomState(2).randn(2, 6, GQA.d_model), jnp.float32)

  def loss(p, cfg):
    y, _ = stack_forward(p, x_btd, cfg)
    return jnp.sum(jnp.sin(y))

  plain_loss, plain_grads = jax.value_and_grad(loss)(params, GQA)
  remat_cfg = dataclasses.replace(GQA, remat_policy=policy)
  remat_loss, remat_grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, remat_cfg)
  np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
  for g_remat, g_plain in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(g_remat, g_plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", ["none", "full"])
def test_unrolled_layers_keep_values_and_gradients(policy):
  cfg = dataclasses.replace(GQA, remat_policy=policy)
  params = random_params(stack_param_specs(cfg))
  x_btd = jnp.asarray(np.random.RandomState(3).randn(2, 6, cfg.d_model), jnp.float32)

  def loss(p, cfg):
    y, _ = stack_forward(p, x_btd, cfg)
    return jnp.sum(jnp.sin(y))

  grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  scanned_loss, scanned_grads = grad_fn(params, cfg)
  unrolled = dataclasses.replace(cfg, scan_layers=False)
  unrolled_loss, unrolled_grads = grad_fn(params, unrolled)
  assert "while" in jax.jit(loss, static_argnums=1).lower(params, cfg).as_text()
  assert "while" not in jax.jit(loss, static_argnums=1).lower(params, unrolled).as_text()
  np.testing.assert_allclose(unrolled_loss, scanned_loss, rtol=1e-6)
  for g_unrolled, g_scanned in zip(jax.tree.leaves(unrolled_grads),
                                   jax.tree.leaves(scanned_grads)):
    np.testing.assert_allclose(g_unrolled, g_scanned, atol=1e-5, rtol=0)


def test_unrolled_layers_fill_the_kv_cache_alike():
  """Prefill then one cached step: outputs and cache equal with the layer loop scanned or not."""
  params = random_params(stack_param_specs(GQA))
  x_btd = jnp.asarray(np.random.RandomState(4).randn(2, 5, GQA.d_model), jnp.float32)

  def run(cfg):
    cache = init_cache(cfg, batch=2, max_len=8)
    y_prefill, cache = stack_forward(params, x_btd[:, :4], cfg, cache=cache)
    y_step, cache = stack_forward(params, x_btd[:, 4:], cfg, cache=cache)
    return y_prefill, y_step, cache.k_lbskh, cache.v_lbskh

  for unrolled, scanned in zip(jax.jit(run, static_argnums=0)(
      dataclasses.replace(GQA, scan_layers=False)), jax.jit(run, static_argnums=0)(GQA)):
    np.testing.assert_allclose(unrolled, scanned, atol=1e-5, rtol=0)
