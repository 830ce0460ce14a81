"""The train step on one device: NaN/inf guard, LoRA (only adapters move), gradient accumulation;
and the loop stopping (with a checkpoint) after too many non-finite steps in a row.

One step is compiled for the module: phase 1, LoRA rank 2 on q/v, two micro-batches.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimo_jax import sharding
from mimo_jax.lm import loss as lm_loss
from mimo_jax.train import checkpoint, data, lora, loop, run_dir
from mimo_jax.train import config as train_config
from mimo_jax.train.state import TrainSetup, create_state
from mimo_jax.train.step import TrainStep, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "tiny.py")


def config():
  cfg = train_config.load_file(CONFIG)
  cfg.train.phase = "understanding"
  cfg.train.batch_size = 4
  cfg.train.positions = 16
  cfg.train.grad_accum_steps = 2
  cfg.train.lora.rank = 2
  cfg.train.lora.targets = "q_proj,v_proj"
  cfg.train.max_bad_steps = 3
  cfg.train.warmup_ratio = 0.0  # the first applied update already moves the params
  cfg.log.tensorboard = False
  return cfg


@pytest.fixture(scope="module")
def built():
  cfg = config()
  mesh = sharding.make_mesh("data:1,fsdp:1,tensor:1", devices=jax.devices()[:1])
  setup = TrainSetup.from_config(cfg)
  train_step = make_train_step(setup, mesh, cfg.train.batch_size, cfg.train.positions,
                               cfg.data.empty_id)
  source = data.make_source(cfg, setup.model, mesh)
  batches = [next(source.iterator) for _ in range(2)]
  return cfg, mesh, setup, train_step, batches


def host(tree):
  return jax.tree.map(np.array, tree)


def test_guard_skips_non_finite_updates_and_lora_moves_only_adapters(built):
  cfg, mesh, setup, train_step, batches = built
  state = create_state(setup, jax.random.key(0), mesh)
  encoder_layers = state["params"]["input_local_transformer"]["layers"]
  poisoned = encoder_layers["mlp"]["up_proj"]["kernel"].at[0, 0, 0].set(jnp.inf)
  state["params"]["input_local_transformer"]["layers"]["mlp"]["up_proj"]["kernel"] = poisoned
  before = host(state)

  state, m = train_step.fn(state, batches[0])
  assert not m["finite"] and not np.isfinite(m["loss"])
  after = host(state)
  for a, b in zip(jax.tree.leaves(before["params"]) + jax.tree.leaves(before["opt_state"]),
                  jax.tree.leaves(after["params"]) + jax.tree.leaves(after["opt_state"])):
    np.testing.assert_array_equal(a, b)  # nothing moved, not even the optimizer's count
  assert (after["step"], after["bad_steps"], after["skipped_steps"]) == (1, 1, 1)

  clean = before["params"]["input_local_transformer"]["layers"]["mlp"]["up_proj"]["kernel"]
  clean[0, 0, 0] = 0.0
  state["params"]["input_local_transformer"]["layers"]["mlp"]["up_proj"]["kernel"] = (
      jax.device_put(clean, poisoned.sharding))
  state, m = train_step.fn(state, batches[1])
  assert m["finite"] and np.isfinite(m["loss"])
  after = host(state)
  assert (after["step"], after["bad_steps"], after["skipped_steps"]) == (2, 0, 1)
  # Phase 1 with LoRA: the base LLM and the patch decoder stay bit-identical; the adapters'
  # B (zero at start) and the patch encoder move.
  for top in ("model", "lm_head", "local_transformer", "local_transformer_lm_heads"):
    for a, b in zip(jax.tree.leaves(before["params"][top]), jax.tree.leaves(after["params"][top])):
      np.testing.assert_array_equal(a, b)
  for proj in ("q_proj", "v_proj"):
    assert np.any(after["lora"]["model"]["layers"]["self_attn"][proj]["b"] != 0)
  assert not np.array_equal(before["params"]["speech_group_downcast"]["kernel"],
                            after["params"]["speech_group_downcast"]["kernel"])


def test_accumulated_loss_is_the_mean_over_micro_batches(built):
  cfg, mesh, setup, train_step, batches = built
  state = create_state(setup, jax.random.key(1), mesh)
  params = lora.merge(host(state["params"]), host(state["lora"]), 2, cfg.train.lora.alpha)
  micro = [{k: np.asarray(v)[i::2] for k, v in batches[0].items()} for i in range(2)]
  # Step 0's dropout key (the run's key folded with the step), one split per micro-batch.
  keys = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 0), 2)
  forward = jax.jit(lambda p, b, k: lm_loss.loss(p, setup.model, setup.loss, b,
                                                 cfg.data.empty_id, dropout_key=k)[0])
  want = np.mean([forward(params, b, k) for b, k in zip(micro, keys)])
  _, m = train_step.fn(state, batches[0])
  np.testing.assert_allclose(m["loss"], want, atol=1e-5, rtol=0)


def test_dropout_draws_follow_the_state_rng_and_step(built):
  cfg, mesh, setup, train_step, batches = built
  assert setup.model.local_attn_dropout > 0  # the patch encoder trains in phase 1

  def loss_of(rng_seed=2, step=0):
    state = create_state(setup, jax.random.key(2), mesh)  # the same params and adapters
    state["rng"] = jax.device_put(jax.random.key_data(jax.random.key(rng_seed)),
                                  state["rng"].sharding)
    state["step"] = jax.device_put(np.int32(step), state["step"].sharding)
    return float(train_step.fn(state, batches[0])[1]["loss"])

  first = loss_of()
  assert loss_of() == first  # a resumed run (same key, same step) draws the same
  assert loss_of(rng_seed=3) != first
  assert loss_of(step=1) != first  # a fresh draw every step


def test_loop_stops_with_a_checkpoint_after_k_non_finite_steps(built, tmp_path):
  cfg, mesh, setup, train_step, _ = built

  def always_non_finite(state, batch):  # stands in for a model that diverged
    del batch
    state = {**state, "step": state["step"] + 1, "bad_steps": state["bad_steps"] + 1,
             "skipped_steps": state["skipped_steps"] + 1}
    nan = jnp.float32(jnp.nan)
    return state, {"loss": nan, "text_loss": nan, "text_acc": nan, "grad_norm": nan,
                   "finite": jnp.bool_(False)}

  fake = TrainStep(always_non_finite, *train_step[1:])
  with pytest.raises(loop.NonFiniteError, match="after 3 non-finite steps in a row at step 3"):
    loop.train(cfg, str(tmp_path), train_step=fake)
  with checkpoint.Checkpointer(os.path.join(tmp_path, run_dir.CHECKPOINT_DIR),
                               read_only=True) as ckpt:
    assert ckpt.latest_step() == 3
