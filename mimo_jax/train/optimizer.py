"""The optimizer: per-module learning rates, AdamW on matrices, global clipping, warm-up schedules.

Parameters fall into three groups by their top-level name (spec §5.1): the patch encoder (its
stack, the speech embeddings it reads, the group downcast), the LLM (embeddings, layers, norm,
lm_head) and the patch decoder (its stack, heads and the hidden-state downcast). A group whose
learning rate is 0 (the patch decoder in phase 1, the base LLM under LoRA) is *frozen*: it is
left out of the trainable tree altogether, so it gets no gradient, no optimizer state and no
weight decay, and stays bit-identical.

Trees here hold `None` where a parameter is frozen (`prune`), which JAX and optax treat as an
empty subtree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mimo_jax.nn.params import is_spec
from mimo_jax.train.config import OptimizerConfig

_GROUP_OF_TOP_KEY = {
    "input_local_transformer": "patch_encoder",
    "speech_embeddings": "patch_encoder",
    "speech_group_downcast": "patch_encoder",
    "model": "llm",
    "lm_head": "llm",
    "local_transformer": "patch_decoder",
    "local_transformer_lm_heads": "patch_decoder",
    "hidden_states_downcast": "patch_decoder",
    "speech_embeddings_to_local": "patch_decoder",
}


def group_of(top_key: str) -> str:
  if top_key not in _GROUP_OF_TOP_KEY:
    raise KeyError(f"parameter {top_key!r} belongs to no optimizer group")
  return _GROUP_OF_TOP_KEY[top_key]


def _is_leaf(x: Any) -> bool:
  return x is None or is_spec(x)


def prune(tree: Any, keep: Any) -> Any:
  """`tree` with None wherever the matching leaf of `keep` is False."""
  return jax.tree.map(lambda x, k: x if k else None, tree, keep, is_leaf=_is_leaf)


def combine(trainable: Any, frozen: Any) -> Any:
  """The inverse of pruning: leaves of `trainable`, and of `frozen` where trainable is None."""
  return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen,
                      is_leaf=lambda x: x is None)


def trainable_specs(model_specs: dict, lora_specs: dict | None, opt: OptimizerConfig) -> dict:
  """{"params": model specs with None for frozen groups[, "lora": adapter specs]}.

  Under LoRA the LLM group trains through its adapters only.
  """
  def keep(top_key: str) -> bool:
    group = group_of(top_key)
    return opt.lr(group) > 0 and not (group == "llm" and lora_specs is not None)
  tree = {"params": {k: (v if keep(k) else jax.tree.map(lambda _: None, v, is_leaf=is_spec))
                     for k, v in model_specs.items()}}
  if lora_specs is not None:
    tree["lora"] = lora_specs
  return tree


def labels(specs_tree: dict) -> dict:
  """The group name of each trainable leaf (adapters train with the LLM's learning rate)."""
  def label(path, _):
    return "llm" if path[0].key == "lora" else group_of(path[1].key)
  return jax.tree_util.tree_map_with_path(label, specs_tree, is_leaf=is_spec)


def decay_mask(specs_tree: dict) -> dict:
  """Weight decay on matrices only: two or more axes besides the stacked `layers` axis."""
  return jax.tree.map(lambda s: sum(a != "layers" for a in s.axes) >= 2, specs_tree,
                      is_leaf=is_spec)


def schedule(opt: OptimizerConfig, peak: float) -> optax.Schedule:
  """Linear warm-up from 0, then constant or cosine (to cosine_final_ratio x peak)."""
  warmup = opt.warmup_steps
  if opt.schedule == "constant":
    if warmup == 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 optax.constant_schedule(peak)], [warmup])
  if warmup == 0:
    return optax.cosine_decay_schedule(peak, max(opt.total_steps, 1), alpha=opt.cosine_final_ratio)
  return optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup_steps=warmup, decay_steps=max(opt.total_steps, warmup + 1),
      end_value=peak * opt.cosine_final_ratio)


def schedules(opt: OptimizerConfig) -> dict[str, optax.Schedule]:
  """The schedule of every trained group."""
  return {group: schedule(opt, lr) for group, lr in opt.learning_rates if lr > 0}


class GroupScheduleState(NamedTuple):
  count: jax.Array  # updates applied so far (skipped steps do not count)


def scale_by_group_schedules(group_labels: dict,
                             group_schedules: dict[str, optax.Schedule]
                             ) -> optax.GradientTransformation:
  """Multiplies each leaf's update by -schedule(count) of its group (the AdamW LR step)."""
  def init(params):
    del params
    return GroupScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    lrs = {group: sched(state.count) for group, sched in group_schedules.items()}
    updates = jax.tree.map(lambda u, group: -lrs[group] * u, updates, group_labels)
    return updates, GroupScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


def make(opt: OptimizerConfig, specs_tree: dict) -> optax.GradientTransformation:
  """Global-norm clipping, Adam, decoupled weight decay on matrices, per-group LR schedules.

  This is AdamW (optax.adamw's chain) with one learning-rate schedule per group. `specs_tree` is
  the trainable tree of `trainable_specs`; the transformation runs on trees of that structure
  (None at frozen leaves).
  """
  return optax.chain(
      optax.clip_by_global_norm(opt.clip_norm),
      optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
      optax.add_decayed_weights(opt.weight_decay, mask=decay_mask(specs_tree)),
      scale_by_group_schedules(labels(specs_tree), schedules(opt)))
