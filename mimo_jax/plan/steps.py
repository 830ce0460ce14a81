"""The steps the planner compiles: the real train step of `mimo_jax.train` and one LLM step of
batched generation (`mimo_jax.lm.generate.decode`), as abstract sharded inputs for a mesh.

Nothing here allocates device memory: every argument is a ShapeDtypeStruct carrying its
NamedSharding, so the same code plans a 7B step for 256 abstract TPU chips on a laptop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mimo_jax import sharding
from mimo_jax.lm import generate, model
from mimo_jax.nn.params import abstract_params, logical_axes
from mimo_jax.lm import flops
from mimo_jax.plan.report import StepSpec
from mimo_jax.train import config as train_config
from mimo_jax.train import step as train_step
from mimo_jax.train.state import TrainSetup


def train_setup(cfg: ml_collections.ConfigDict, remat_policy: str | None = None) -> TrainSetup:
  """The TrainSetup a training run builds from an experiment config (optionally with another
  remat policy: the planner counts model FLOPs without rematerialisation)."""
  model_cfg = train_config.model_from(cfg)
  if remat_policy is not None:
    model_cfg = model_cfg.replace(remat_policy=remat_policy)
  return TrainSetup(model=model_cfg, loss=train_config.loss_from(cfg),
                    opt=train_config.optimizer_from(cfg),
                    grad_accum_steps=cfg.train.grad_accum_steps)


def train_spec(cfg: ml_collections.ConfigDict, mesh: Mesh) -> StepSpec:
  """The training job's own step (optimizer groups, chunked CE, remat, micro-batches, NaN
  guard) for cfg.train.batch_size x cfg.train.positions."""
  train_config.validate(cfg)
  t = cfg.train
  setup = train_setup(cfg)
  step = train_step.make_train_step(setup, mesh, t.batch_size, t.positions, cfg.data.empty_id)
  no_remat = train_step.make_train_step(train_setup(cfg, "none"), mesh, t.batch_size,
                                        t.positions, cfg.data.empty_id)
  state = step.abstract_state
  parts = {"params": state["params"], "optimizer state": state["opt_state"],
           "batch": step.abstract_batch}
  if "lora" in state:
    parts["LoRA adapters"] = state["lora"]
  capacity = setup.loss.audio_capacity
  patch_stacks = ("patch encoder and decoder" if setup.loss.trains_audio else "patch encoder")
  notes = [
      f"phase {t.phase}; {t.batch_size} sequences x {t.positions} positions in "
      f"{t.grad_accum_steps} micro-batch(es) of {t.batch_size // t.grad_accum_steps}; "
      f"remat {setup.model.remat_policy}; text CE chunk {setup.loss.text_chunk_size or 'whole'}; "
      f"compute {setup.model.dtype} over {setup.model.param_dtype} master weights; "
      f"backbone attention {setup.model.attention}",
      (f"audio capacity {capacity}: the {patch_stacks} run on "
       f"{model.audio_capacity(t.positions, capacity)} slots per sequence" if capacity else
       f"no audio capacity: the {patch_stacks} run at every position (text masked)"),
      "the text cross-entropy always recomputes its lm_head chunk in the backward pass, so "
      "jaxpr model FLOPs sit a little above the analytic count",
  ]
  if setup.model.attention == "splash":
    notes.append(
        "splash attention: its Pallas kernels count the blocks they run (causal: the blocks on "
        "and below the diagonal) and the backward kernels recompute q.k (flash attention), so "
        "the jaxpr counts 4.5 x the forward q.k + p.v of the computed blocks where the analytic "
        "count takes 3 x the dense [t, t] scores")
  return StepSpec(
      name=f"train/{t.phase}", fn=step.fn, args=(state, step.abstract_batch), parts=parts,
      tokens=t.batch_size * t.positions,
      analytic_flops=flops.train_flops(setup.model, setup.loss, t.batch_size,
                                       t.positions),
      model_flop_fn=no_remat.fn, notes=tuple(notes))


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree,
                      shardings)


def _decode_state_shardings(state: generate.State, mesh: Mesh, rows: int) -> generate.State:
  """KV caches [l, b, s, k, h]: rows over the batch axes, kv heads over `tensor`; every other
  per-row array by its rows; scalars replicated."""
  batch = sharding.logical_to_spec(("batch",))[0]

  def spec(path, leaf):
    names = [getattr(p, "name", getattr(p, "key", None)) for p in path]
    if "cache" in names and leaf.ndim == 5:
      return NamedSharding(mesh, sharding.logical_to_spec((None, "batch", None, "kv_heads",
                                                           None)))
    if leaf.ndim and leaf.shape[0] == rows:
      return NamedSharding(mesh, PartitionSpec(batch))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map_with_path(spec, state)


def generate_spec(cfg: ml_collections.ConfigDict, mesh: Mesh, rows: int, prompt_positions: int,
                  max_new: int) -> StepSpec:
  """One LLM step of `mimo_jax.lm.generate.decode` (text sample, the patch decoder's delayed
  steps when a row emits a patch, the patch fed back through the patch encoder and the backbone)
  for `rows` sequences with a KV cache of prompt_positions + max_new slots; bf16 weights."""
  model_cfg = train_config.model_from(cfg).replace(param_dtype="bfloat16")
  empty_id = cfg.data.empty_id
  specs = model.param_specs(model_cfg)
  params = _with_shardings(abstract_params(specs, jnp.bfloat16),
                           sharding.named_shardings(logical_axes(specs), mesh))
  g, c = model_cfg.group_size, model_cfg.audio_channels
  prompt = jax.ShapeDtypeStruct((rows, 1 + c, g * prompt_positions), jnp.int32)
  lengths = jax.ShapeDtypeStruct((rows,), jnp.int32)
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), rows))
  state = jax.eval_shape(
      lambda p, x, n, k: generate.prefill(p, model_cfg, x, n, k, empty_id=empty_id,
                                          max_new=max_new), params, prompt, lengths, keys)
  state = _with_shardings(state, _decode_state_shardings(state, mesh, rows))
  _, _, _, settings, _ = generate.pack(
      model_cfg, [generate.Request(np.zeros((1 + c, g), np.int32), max_new)] * rows,
      batch=rows, prompt_positions=1, max_new=max_new)
  replicated = NamedSharding(mesh, PartitionSpec())
  settings = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                         sharding=replicated), settings)
  until = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  fn = jax.jit(lambda p, s, st, u: generate.decode(p, model_cfg, s, st, u, empty_id=empty_id),
               donate_argnums=1)
  notes = (f"one LLM step of {rows} rows, KV cache of {prompt_positions} + {max_new} slots; the "
           "while loop's body is counted once (one step) and the patch decoder branch is counted "
           "as taken",)
  return StepSpec(
      name="generate/step", fn=fn, args=(params, state, settings, until),
      parts={"params (bf16)": params, "decode state (KV cache)": state, "settings": settings},
      tokens=rows, analytic_flops=flops.decode_step_flops(model_cfg, rows,
                                                          prompt_positions + max_new),
      notes=notes)
