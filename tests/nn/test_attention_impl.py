"""The memory-efficient attention implementations against the explicit-mask XLA path.

Chunked runs with small query chunks (QUERY_CHUNK patched) so that several chunks, the last one
padded, take part. Splash runs in Pallas interpret mode here (no TPU); its TPU compile is shown by
experiments/bench/attention_tpu_aot.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimo_jax import config as config_lib
from mimo_jax import sharding
from mimo_jax.config import StackConfig
from mimo_jax.nn import attention
from mimo_jax.nn.attention import self_attend
from mimo_jax.nn.stack import stack_forward, stack_param_specs
from tests.helpers import random_params

# The backbone's GQA layout at tiny width; 384 tokens = 3 splash blocks of 128, so the causal
# block skipping and the kernel's cross-block online softmax both take part.
GQA = StackConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
                  rope_theta=10000.0, norm_eps=1e-6, causal=True)
T = 384


def _packed_rows(b: int, t: int) -> tuple[np.ndarray, np.ndarray]:
  """Segment ids and positions of rows packed with several sequences and trailing padding.

  Row r holds sequences of unequal lengths that cross block boundaries; padding (segment 0)
  fills the tail at position 0, as mimo_jax.data.packing lays rows out; positions restart at
  each segment.
  """
  segment_ids = np.zeros((b, t), np.int32)
  positions = np.zeros((b, t), np.int32)
  for r in range(b):
    lengths = (100 + 37 * r, 190, t - 100 - 37 * r - 190 - 20)  # the last 20 slots: padding
    start = 0
    for i, n in enumerate(lengths):
      segment_ids[r, start:start + n] = i + 1
      positions[r, start:start + n] = np.arange(n)
      start += n
  return segment_ids, positions


@pytest.fixture(scope="module")
def stack_grads():
  """Loss value and gradients (params, inputs) of the GQA stack, per implementation."""
  params = random_params(stack_param_specs(GQA))
  rng = np.random.RandomState(0)
  x_btd = jnp.asarray(rng.randn(2, T, GQA.d_model), jnp.float32)
  segment_ids, positions = (jnp.asarray(a) for a in _packed_rows(2, T))
  # Padding outputs differ between the implementations (see self_attend) and, as in training,
  # carry no loss; real tokens never see padding.
  w_btd = jnp.asarray(rng.randn(2, T, GQA.d_model), jnp.float32) * (segment_ids > 0)[..., None]

  def run(impl):
    cfg = dataclasses.replace(GQA, attention=impl)

    def loss(p, x):
      y_btd, _ = stack_forward(p, x, cfg, positions_bt=positions, segment_ids_bt=segment_ids)
      return jnp.sum(y_btd * w_btd)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x_btd)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(attention, "QUERY_CHUNK", 160)  # 384 queries: chunks of 160, 160, 64 + padding
    return {impl: run(impl) for impl in ("xla", "splash", "chunked")}


@pytest.mark.parametrize("impl", ["splash", "chunked"])
def test_stack_matches_xla_values_and_gradients(stack_grads, impl):
  (loss_xla, grads_xla), (loss_ours, grads_ours) = stack_grads["xla"], stack_grads[impl]
  np.testing.assert_allclose(float(loss_ours), float(loss_xla), rtol=1e-4)
  flat_xla, flat_ours = jax.tree.leaves(grads_xla), jax.tree.leaves(grads_ours)
  assert len(flat_xla) == len(flat_ours) > 0
  for ref, ours in zip(flat_xla, flat_ours):
    scale = max(1.0, float(jnp.max(jnp.abs(ref))))
    np.testing.assert_allclose(np.asarray(ours) / scale, np.asarray(ref) / scale, atol=1e-4,
                               rtol=0)


def _qkv(b: int, t: int, n: int, k: int, h: int, seed: int):
  rng = np.random.RandomState(seed)
  return tuple(jnp.asarray(rng.randn(b, t, heads, h), jnp.float32) for heads in (n, k, k))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_splash_attend_matches_xla(causal):
  q, k, v = _qkv(2, 256, 4, 2, 16, seed=1)
  segment_ids, positions = (jnp.asarray(a) for a in _packed_rows(2, 256 + 128))
  segment_ids, positions = segment_ids[:, 128:], positions[:, 128:]  # start mid-sequence
  # and pad the tail with positions that count on, so that every output, padding's included,
  # must agree (see self_attend).
  segment_ids = segment_ids.at[:, 200:].set(0)
  positions = positions.at[:, 200:].set(jnp.arange(56))
  ref, ours = (jax.jit(lambda q, k, v, impl=impl: self_attend(
      q, k, v, positions, segment_ids, causal=causal, impl=impl))(q, k, v)
               for impl in ("xla", "splash"))
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_chunked_attend_matches_xla_values_and_gradients(causal, monkeypatch):
  monkeypatch.setattr(attention, "QUERY_CHUNK", 64)  # 200 queries: 4 chunks, the last padded
  q, k, v = _qkv(2, 200, 4, 2, 16, seed=4)
  segment_ids, positions = (jnp.asarray(a) for a in _packed_rows(2, 384))
  segment_ids, positions = segment_ids[:, 184:], positions[:, 184:]  # mid-sequence to padding
  w_btnh = jnp.asarray(np.random.RandomState(5).randn(*q.shape), jnp.float32)

  def run(impl):
    def loss(q, k, v):
      o_btnh = self_attend(q, k, v, positions, segment_ids, causal=causal, impl=impl)
      return jnp.sum(o_btnh * w_btnh), o_btnh
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

  (grads_ref, out_ref), (grads_ours, out_ours) = run("xla"), run("chunked")
  np.testing.assert_allclose(np.asarray(out_ours), np.asarray(out_ref), atol=1e-5, rtol=0)
  for ref, ours in zip(grads_ref, grads_ours):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=0)


def test_splash_sharded_over_batch_and_heads_matches_xla():
  # data x fsdp shard the 4 rows, tensor the 4 query / 2 kv heads: each shard holds one row,
  # two query heads and their one kv head.
  q, k, v = _qkv(4, 128, 4, 2, 16, seed=2)
  segment_ids = jnp.asarray(np.repeat([[1] * 60 + [2] * 50 + [0] * 18], 4, axis=0), jnp.int32)
  positions = jnp.asarray(np.repeat([list(range(60)) + list(range(68))], 4, axis=0), jnp.int32)
  attn = lambda impl: jax.jit(lambda q, k, v: self_attend(q, k, v, positions, segment_ids,
                                                          causal=True, impl=impl))
  ref = attn("xla")(q, k, v)
  mesh = sharding.make_mesh("data:2,fsdp:2,tensor:2")
  with jax.set_mesh(mesh):
    ours = attn("splash")(q, k, v)
  assert ours.sharding.is_equivalent_to(jax.NamedSharding(mesh, sharding.logical_to_spec(
      ("batch", "length", "activation_heads", None))), ours.ndim)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=0)


def test_splash_rejects_bad_shapes():
  q, k, v = _qkv(1, 100, 4, 2, 16, seed=3)
  ones = jnp.ones((1, 100), jnp.int32)
  with pytest.raises(ValueError, match="sequence length 100 must be a multiple of 128"):
    self_attend(q, k, v, ones, ones, causal=True, impl="splash")
  q, k, v = _qkv(2, 128, 4, 2, 16, seed=3)
  ones = jnp.ones((2, 128), jnp.int32)
  with jax.set_mesh(sharding.make_mesh("data:1,fsdp:2,tensor:4")):
    with pytest.raises(ValueError, match=r"kv heads \(2\) do not divide"):
      self_attend(q, k, v, ones, ones, causal=True, impl="splash")


def test_attention_is_a_runtime_field_of_the_backbone_only():
  cfg = config_lib.tiny(attention="splash")
  assert cfg.backbone.attention == "splash"
  assert cfg.patch_encoder.attention == cfg.patch_decoder.attention == "xla"
  assert "attention" not in cfg.to_official_dict()
  assert config_lib.MimoAudioConfig.from_official_dict(
      cfg.to_official_dict(), dtype="float32", attention="splash") == cfg
  with pytest.raises(config_lib.ConfigError, match="attention: must be one of"):
    config_lib.tiny(attention="flash")
