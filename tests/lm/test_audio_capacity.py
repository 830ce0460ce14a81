"""The patch encoder and decoder on audio slots gathered to a static capacity: equal to the masked
computation (loss and gradients) when everything fits, overflow dropped and counted, the FLOP
count following the capacity."""

import jax
import numpy as np
import pytest

from mimo_jax import config, sharding
from mimo_jax.config import ConfigError, LossConfig
from mimo_jax.lm import flops as lm_flops
from mimo_jax.lm import loss, model
from mimo_jax.nn.params import logical_axes
from mimo_jax.plan import flops as plan_flops
from mimo_jax.train import config as train_config
from tests.helpers import random_params
from tests.lm.test_loss import EMPTY_ID, _interleaved_batch

POSITIONS = 12


@pytest.fixture(scope="module")
def setup():
  cfg = config.tiny()
  params = random_params(model.param_specs(cfg))
  rng = np.random.RandomState(3)
  input_ids = _interleaved_batch(cfg, rng, n_positions=POSITIONS, rows=4)
  # Packed rows with a prompt: the target mask (segment ends, loss_mask) decides the targets.
  segment_ids = np.array([[1] * 7 + [2] * 5, [1] * 12, [1] * 9 + [0] * 3, [1] * 12])
  loss_mask = np.ones((4, POSITIONS), np.int32)
  loss_mask[1, :4] = 0
  batch = {"input_ids": input_ids, "segment_ids": segment_ids, "loss_mask": loss_mask,
           "positions": np.array([list(range(7)) + list(range(5))] + [list(range(12))] * 3)}
  return cfg, params, batch


def _audio_counts(batch):
  """Audio inputs and audio targets per row, as the loss defines them (numpy)."""
  is_audio_bp = batch["input_ids"][:, 0, ::4] == EMPTY_ID
  has_target_bp = np.asarray(loss.target_mask(batch, POSITIONS))
  is_target_bp = has_target_bp & np.concatenate([is_audio_bp[:, 1:], np.zeros_like(
      is_audio_bp[:, :1])], axis=1)
  return is_audio_bp, is_target_bp


def _value_and_grads(cfg, params, batch, loss_cfg):
  fn = lambda p: loss.loss(p, cfg, loss_cfg, batch, EMPTY_ID)
  return jax.jit(jax.value_and_grad(fn, has_aux=True))(params)


@pytest.mark.parametrize("phase", ["generation", "understanding"])
def test_gathered_loss_and_gradients_equal_the_masked_ones(setup, phase):
  cfg, params, batch = setup
  is_audio_bp, is_target_bp = _audio_counts(batch)
  most = max(is_audio_bp.sum(1).max(), is_target_bp.sum(1).max())
  assert most < POSITIONS  # the capacity below is a real cut, not every position
  (masked, masked_metrics), masked_grads = _value_and_grads(cfg, params, batch,
                                                            LossConfig(phase))
  (gathered, metrics), grads = _value_and_grads(
      cfg, params, batch, LossConfig(phase, audio_capacity=most / POSITIONS))
  assert metrics["audio_dropped_inputs"] == 0
  assert phase == "understanding" or metrics["audio_dropped_targets"] == 0
  # Measured on CPU: the total loss bit-equal, metrics within 9.5e-7 (channel losses of about 7,
  # 2 ulp), gradients within 1.5e-7.
  np.testing.assert_allclose(gathered, masked, atol=1e-6, rtol=0)
  for key, value in masked_metrics.items():
    np.testing.assert_allclose(metrics[key], value, atol=1e-6, rtol=1e-6, err_msg=key)
  jax.tree_util.tree_map_with_path(
      lambda path, g, expected: np.testing.assert_allclose(
          g, expected, atol=1e-6, rtol=0, err_msg=jax.tree_util.keystr(path)),
      grads, masked_grads)


def test_overflow_is_dropped_and_counted(setup):
  """Past the capacity, an audio input adds no patch embedding and an audio target is not
  trained: the same as the masked computation with those positions taken out."""
  cfg, params, batch = setup
  is_audio_bp, is_target_bp = _audio_counts(batch)
  k = 3
  fraction = k / POSITIONS
  kept_input_bp = is_audio_bp & (np.cumsum(is_audio_bp, axis=1) <= k)
  kept_target_bp = is_target_bp & (np.cumsum(is_target_bp, axis=1) <= k)
  assert (is_audio_bp & ~kept_input_bp).sum() > 0 and (is_target_bp & ~kept_target_bp).sum() > 0

  _, metrics = jax.jit(lambda p: loss.loss(p, cfg, LossConfig(audio_capacity=fraction), batch,
                                           EMPTY_ID))(params)
  assert metrics["audio_dropped_inputs"] == (is_audio_bp & ~kept_input_bp).sum()
  assert metrics["audio_dropped_targets"] == (is_target_bp & ~kept_target_bp).sum()

  ids = batch["input_ids"]
  embeds = jax.jit(lambda p: model.input_embeds(p, cfg, ids, EMPTY_ID, slots=model.audio_slots(
      is_audio_bp, fraction)))(params)
  masked = jax.jit(lambda p: model.input_embeds(p, cfg, ids, EMPTY_ID))(params)
  # Measured: within 1.6e-6 (values of order 1; the same patches in a matmul of another shape).
  np.testing.assert_allclose(embeds[kept_input_bp], masked[kept_input_bp], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(embeds[is_audio_bp & ~kept_input_bp], 0)
  np.testing.assert_array_equal(embeds[~is_audio_bp], masked[~is_audio_bp])

  hidden_bpd = jax.jit(lambda p: model.forward(p, cfg, ids, EMPTY_ID))(params)
  _, codes_bpgc = model.split_channels(ids, cfg)
  run = jax.jit(lambda slots: loss.audio_losses(params, cfg, hidden_bpd, codes_bpgc, slots)[1])
  dropped = run(model.audio_slots(is_target_bp, fraction))
  expected = run(model.audio_slots(kept_target_bp, 0.0))
  for key, value in expected.items():  # measured: within 2e-7 of the value (1.4e-6 at 7.2)
    np.testing.assert_allclose(dropped[key], value, rtol=1e-6, err_msg=key)


def test_gathered_dropout_follows_its_key(setup):
  cfg, params, batch = setup
  lcfg = LossConfig(audio_capacity=0.75)
  metrics = lambda model_cfg: jax.jit(lambda p, k: loss.loss(p, model_cfg, lcfg, batch, EMPTY_ID,
                                                             dropout_key=k)[1])
  official = metrics(cfg)
  run = lambda key: official(params, key)
  first, again, other = (run(jax.random.key(s)) for s in (0, 0, 1))
  deterministic = run(None)
  for name in ("text_loss", "audio_loss_c0"):
    assert first[name] == again[name] != other[name], name
    assert first[name] != deterministic[name], name
  rate_zero = metrics(cfg.replace(local_attn_dropout=0.0))(params, jax.random.key(0))
  for name, value in deterministic.items():
    np.testing.assert_array_equal(rate_zero[name], value, err_msg=name)


def test_sharded_gathered_loss_equals_single_device(setup):
  cfg, params, batch = setup
  fn = lambda p, b: loss.loss(p, cfg, LossConfig(audio_capacity=0.5), b, EMPTY_ID)[0]
  expected = jax.jit(fn)(params, batch)
  mesh = sharding.make_mesh("data:2,fsdp:2,tensor:2")
  sharded = sharding.shard_params(params, logical_axes(model.param_specs(cfg)), mesh)
  sharded_batch = {k: sharding.shard_params(v, ("batch",) + (None,) * (v.ndim - 1), mesh)
                   for k, v in batch.items()}
  with jax.set_mesh(mesh):
    total = jax.jit(fn)(sharded, sharded_batch)
  np.testing.assert_allclose(total, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("capacity", [0.0, 0.25])
def test_analytic_flops_follow_the_capacity(setup, capacity):
  """The jaxpr count of forward + backward against lm.flops.train_flops (tiny shapes, where
  elementwise-free small matmuls make the analytic count a few percent off)."""
  cfg, params, batch = setup
  lcfg = LossConfig(audio_capacity=capacity)
  grad_fn = jax.grad(lambda p: loss.loss(p, cfg, lcfg, batch, EMPTY_ID)[0])
  counted = plan_flops.count_flops(grad_fn, params).flops
  analytic = lm_flops.train_flops(cfg, lcfg, 4, POSITIONS)
  assert abs(counted / analytic - 1) < 0.05, counted / analytic


def test_capacity_out_of_range_names_the_field():
  cfg = train_config.defaults()
  cfg.train.audio_capacity = 1.5
  with pytest.raises(ConfigError, match=r"config\.train\.audio_capacity"):
    train_config.validate(cfg)
