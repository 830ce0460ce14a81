"""The train state: one pytree of arrays, its shardings and its abstract (allocation-free) form.

state = {
  "step":          int32 []   batches consumed (skipped non-finite steps included)
  "params":        the speech LM's parameters (param_dtype, fp32 master weights by default)
  "lora":          LoRA adapters (only with train.lora.rank > 0)
  "opt_state":     optimizer state over the trainable tree (frozen groups have none)
  "rng":           uint32 [2]  the run's base key data; step s draws its dropout (the local
                               stacks' attention dropout) from fold_in(rng, s)
  "bad_steps":     int32 []   non-finite steps in a row (the NaN guard)
  "skipped_steps": int32 []   non-finite steps in total
}

`TrainSetup` resolves everything the state's structure depends on (model config, optimizer
config, which parameters train), so init, sharding, checkpoint restore and the step agree.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mimo_jax import sharding
from mimo_jax.config import LossConfig, MimoAudioConfig
from mimo_jax.lm import model
from mimo_jax.nn.params import abstract_params, init_params, is_spec, logical_axes
from mimo_jax.train import lora, optimizer
from mimo_jax.train import config as train_config
from mimo_jax.train.config import OptimizerConfig

COUNTERS = ("step", "bad_steps", "skipped_steps")


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What a run trains and how: the structure of its state and the step's numerics."""

  model: MimoAudioConfig
  loss: LossConfig
  opt: OptimizerConfig
  grad_accum_steps: int = 1

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict,
                  model_cfg: MimoAudioConfig | None = None) -> TrainSetup:
    """The setup an experiment config describes (model_cfg replaces its model block)."""
    return cls(model=model_cfg or train_config.model_from(cfg),
               loss=train_config.loss_from(cfg), opt=train_config.optimizer_from(cfg),
               grad_accum_steps=cfg.train.grad_accum_steps)

  @property
  def model_specs(self) -> dict:
    return model.param_specs(self.model)

  @property
  def lora_specs(self) -> dict | None:
    if self.opt.lora_rank == 0:
      return None
    return lora.specs(self.model_specs, self.opt.lora_rank, self.opt.lora_targets)

  @property
  def trainable_specs(self) -> dict:
    return optimizer.trainable_specs(self.model_specs, self.lora_specs, self.opt)

  def tx(self) -> optax.GradientTransformation:
    return optimizer.make(self.opt, self.trainable_specs)

  def trainable(self, state: dict) -> dict:
    """The trainable tree of a state (None at frozen parameters)."""
    keep = jax.tree.map(lambda s: s is not None, self.trainable_specs["params"],
                        is_leaf=lambda x: x is None or is_spec(x))
    tree = {"params": optimizer.prune(state["params"], keep)}
    if "lora" in state:
      tree["lora"] = state["lora"]
    return tree


def init_state(setup: TrainSetup, key: jax.Array, params: dict | None = None) -> dict:
  """A fresh state: params drawn from `key` unless given (a phase-1 or imported checkpoint)."""
  param_key, lora_key = jax.random.split(key)
  dtype = jnp.dtype(setup.model.param_dtype)
  state = {"step": jnp.zeros([], jnp.int32),
           "params": init_params(setup.model_specs, param_key, dtype) if params is None
           else params,
           "rng": jax.random.key_data(key),
           "bad_steps": jnp.zeros([], jnp.int32),
           "skipped_steps": jnp.zeros([], jnp.int32)}
  if setup.lora_specs is not None:
    state["lora"] = init_params(setup.lora_specs, lora_key, dtype)
  state["opt_state"] = setup.tx().init(setup.trainable(state))
  return state


def state_shardings(setup: TrainSetup, mesh: Mesh) -> dict:
  """NamedSharding per state leaf: params (and their optimizer moments) by logical axes,
  counters, the RNG and step counts replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  param_shardings = sharding.named_shardings(logical_axes(setup.model_specs), mesh)
  out = {"params": param_shardings, "rng": replicated,
         **{name: replicated for name in COUNTERS}}
  if setup.lora_specs is not None:
    out["lora"] = sharding.named_shardings(logical_axes(setup.lora_specs), mesh)
  abstract_opt = _abstract_without_shardings(setup)["opt_state"]
  trainable_shardings = setup.trainable(out)
  out["opt_state"] = optax.tree_map_params(
      setup.tx(), lambda _, s: s, abstract_opt, trainable_shardings,
      transform_non_params=lambda _: replicated, is_leaf=lambda x: x is None)
  return out


def _abstract_without_shardings(setup: TrainSetup) -> dict:
  return jax.eval_shape(lambda k: init_state(setup, k), jax.random.key(0))


def abstract_state(setup: TrainSetup, mesh: Mesh) -> dict:
  """ShapeDtypeStructs with shardings for every state leaf: no allocation (AOT compile,
  checkpoint restore)."""
  shapes = _abstract_without_shardings(setup)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                      state_shardings(setup, mesh))


def create_state(setup: TrainSetup, key: jax.Array, mesh: Mesh,
                 params: dict | None = None) -> dict:
  """A fresh state built directly in its shards (no host holds the whole model)."""
  return _state_initializer(setup, mesh)(key, params)


@functools.lru_cache(maxsize=8)
def _state_initializer(setup: TrainSetup, mesh: Mesh):
  # One jitted initializer per (setup, mesh), so repeated runs in a process compile it once.
  return jax.jit(lambda k, p: init_state(setup, k, p), out_shardings=state_shardings(setup, mesh))


def abstract_params_of(model_cfg: MimoAudioConfig, mesh: Mesh) -> dict:
  """The params of a model alone, abstract and sharded over `mesh` (to load params from another
  run or folder)."""
  specs = model.param_specs(model_cfg)
  shardings = sharding.named_shardings(logical_axes(specs), mesh)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      abstract_params(specs, jnp.dtype(model_cfg.param_dtype)), shardings)
