"""One jitted train step: loss and gradients (optionally over micro-batches), a guarded update.

The step is a pure function (state, batch) -> (state, metrics), jitted once with explicit in/out
shardings and the state donated. Compute runs in the model's `dtype` (bf16 by default) over the
`param_dtype` master weights (fp32), which the model casts per use; gradients, optimizer moments
and the update are in the master dtype.

NaN/inf guard: when the loss or the gradient norm is not finite, the update is skipped (params
and optimizer state pass through unchanged), `bad_steps` counts the run of such steps and
`skipped_steps` their total; the loop stops the run after `train.max_bad_steps` in a row.

`make_train_step` works on abstract inputs too, so a step compiles for any mesh, TPU topologies
included, without allocating anything:

  setup = TrainSetup.from_config(cfg)          # cfg: an experiment ConfigDict
  ts = make_train_step(setup, mesh, cfg.train.batch_size, cfg.train.positions, cfg.data.empty_id)
  compiled = ts.fn.lower(ts.abstract_state, ts.abstract_batch).compile()
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mimo_jax import sharding
from mimo_jax.config import ConfigError
from mimo_jax.data import pipeline
from mimo_jax.lm import loss as lm_loss
from mimo_jax.train import lora, optimizer
from mimo_jax.train.state import TrainSetup, abstract_state, state_shardings


class TrainStep(NamedTuple):
  fn: Any  # jitted (state, batch) -> (state, metrics); state donated
  abstract_state: dict  # ShapeDtypeStructs with shardings
  state_shardings: dict
  abstract_batch: dict  # ShapeDtypeStructs with shardings
  batch_shardings: dict


def batch_shapes(setup: TrainSetup, batch_size: int, positions: int) -> dict[str, tuple]:
  cfg = setup.model
  return {"input_ids": (batch_size, 1 + cfg.audio_channels, cfg.group_size * positions),
          "segment_ids": (batch_size, positions), "positions": (batch_size, positions),
          "loss_mask": (batch_size, positions)}


def _model_params(setup: TrainSetup, trainable: dict, frozen_params: dict) -> dict:
  params = optimizer.combine(trainable["params"], frozen_params)
  if "lora" in trainable:
    params = lora.merge(params, trainable["lora"], setup.opt.lora_rank, setup.opt.lora_alpha)
  return params


def _micro_batches(batch: dict, k: int) -> dict:
  """[b, ...] -> [k, b / k, ...] taking rows i, i + k, ... into micro-batch i, so that every
  device keeps holding rows of every micro-batch (no resharding)."""
  def split(x):
    x = x.reshape(x.shape[0] // k, k, *x.shape[1:])
    x = jnp.moveaxis(x, 1, 0)
    return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def loss_and_grads(setup: TrainSetup, trainable: dict, frozen_params: dict, batch: dict,
                   empty_id: int, dropout_key: jax.Array) -> tuple[jax.Array, dict, dict]:
  """Mean loss, mean metrics and mean gradients over `grad_accum_steps` micro-batches (each
  with its own dropout key)."""
  def one(trainable, micro, key):
    def f(t):
      return lm_loss.loss(_model_params(setup, t, frozen_params), setup.model, setup.loss, micro,
                          empty_id, dropout_key=key)
    (total, metrics), grads = jax.value_and_grad(f, has_aux=True)(trainable)
    return total, metrics, grads

  k = setup.grad_accum_steps
  if k == 1:
    return one(trainable, batch, dropout_key)

  def body(carry, xs):
    total, metrics, grads = one(trainable, *xs)
    return jax.tree.map(jnp.add, carry, (total, metrics, grads)), None

  xs = (_micro_batches(batch, k), jax.random.split(dropout_key, k))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(one, trainable, *jax.tree.map(lambda x: x[0], xs)))
  sums, _ = jax.lax.scan(body, zeros, xs)
  return jax.tree.map(lambda x: x / k, sums)


def train_step(setup: TrainSetup, tx: optax.GradientTransformation, empty_id: int,
               state: dict, batch: dict) -> tuple[dict, dict]:
  trainable = setup.trainable(state)
  # A fresh key per step from the run's key and the step count: a resumed run draws the same.
  dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
  total, metrics, grads = loss_and_grads(setup, trainable, state["params"], batch, empty_id,
                                         dropout_key)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)

  def apply(_):
    updates, opt_state = tx.update(grads, state["opt_state"], trainable)
    return optax.apply_updates(trainable, updates), opt_state

  def skip(_):
    return trainable, state["opt_state"]

  new_trainable, opt_state = jax.lax.cond(finite, apply, skip, None)
  new_state = dict(state)
  new_state["params"] = optimizer.combine(new_trainable["params"], state["params"])
  if "lora" in new_trainable:
    new_state["lora"] = new_trainable["lora"]
  new_state["opt_state"] = opt_state
  new_state["step"] = state["step"] + 1
  new_state["bad_steps"] = jnp.where(finite, 0, state["bad_steps"] + 1)
  new_state["skipped_steps"] = state["skipped_steps"] + (~finite).astype(jnp.int32)
  applied = state["step"] - state["skipped_steps"]  # the update count the schedules saw
  lrs = {f"lr_{group}": sched(applied)
         for group, sched in optimizer.schedules(setup.opt).items()}
  metrics = {**metrics, **lrs, "grad_norm": grad_norm, "finite": finite,
             "param_norm": optax.tree.norm(new_state["params"])}
  return new_state, metrics


def check_batch(batch_size: int, grad_accum_steps: int, mesh: Mesh) -> None:
  """Every micro-batch must split evenly over the mesh's data-parallel shards."""
  n_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if (batch_size // grad_accum_steps) % n_shards:
    micro = f" / {grad_accum_steps} micro-batches" if grad_accum_steps > 1 else ""
    raise ConfigError(f"config.train.batch_size: {batch_size} sequences{micro} do not divide "
                      f"over the mesh's {n_shards} data-parallel shards (data x fsdp of "
                      f"{dict(mesh.shape)})")


def make_train_step(setup: TrainSetup, mesh: Mesh, batch_size: int, positions: int,
                    empty_id: int) -> TrainStep:
  """The jitted step with its shardings and abstract inputs; nothing is allocated or compiled."""
  check_batch(batch_size, setup.grad_accum_steps, mesh)
  tx = setup.tx()
  shardings = state_shardings(setup, mesh)
  shapes = batch_shapes(setup, batch_size, positions)
  b_shardings = pipeline.batch_shardings(mesh)
  replicated = NamedSharding(mesh, PartitionSpec())

  def step(state, batch):
    # The activation constraints inside the model read the mesh from this context.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return train_step(setup, tx, empty_id, state, batch)

  fn = jax.jit(step, in_shardings=(shardings, b_shardings),
               out_shardings=(shardings, replicated), donate_argnums=0)
  abstract_batch = {k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=b_shardings[k])
                    for k, s in shapes.items()}
  return TrainStep(fn, abstract_state(setup, mesh), shardings, abstract_batch, b_shardings)
