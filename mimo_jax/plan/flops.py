"""FLOPs of a step, counted from its jaxpr (checked against the analytic `mimo_jax.lm.flops`).

XLA's `cost_analysis()` on TPU targets counts a loop body once, so a scanned 36-layer stack
reports about 1/36 of its work. Counting the jaxpr instead, each `scan` body is multiplied by its
trip count, a `cond` takes its most expensive branch, and rematerialised (`checkpoint`) regions
count as often as they appear, so a rematerialised step counts its recomputation too. Only matrix
products (`dot_general`) are counted: they are what the MXU does and what MFU is measured on;
elementwise work is a few percent at LLM widths.

A `shard_map` body has one shard's shapes: it counts once per shard. A Pallas kernel
(`pallas_call`, e.g. splash attention) is opaque to XLA but not to the jaxpr: its body is the
work of one grid step, so it counts once per grid step that runs. Splash attention skips the
blocks its static mask leaves empty (causal: those above the diagonal), as the kernel's block
mask says; that mask is a constant of the step, read by following constants into and out of the
calls that carry them (jit, shard_map, checkpoint, custom_vjp, scan consts).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.extend import core as jex_core

# The values of a jaxpr's variables that are constants of the step.
Known = dict[Any, Any]


@dataclasses.dataclass(frozen=True)
class FlopCount:
  flops: float
  # `while` loops whose trip count the jaxpr does not fix: counted once each (an undercount).
  unbounded_loops: int = 0
  # Splash kernels whose block mask is not a constant: counted at every grid step (an overcount).
  unmasked_kernels: int = 0

  def __add__(self, other: FlopCount) -> FlopCount:
    return FlopCount(self.flops + other.flops, self.unbounded_loops + other.unbounded_loops,
                     self.unmasked_kernels + other.unmasked_kernels)

  def times(self, n: float) -> FlopCount:
    return dataclasses.replace(self, flops=n * self.flops)


def _sub_jaxprs(value: Any) -> list:
  if isinstance(value, (jex_core.ClosedJaxpr, jex_core.Jaxpr)):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _jaxpr(sub):
  return sub.jaxpr if isinstance(sub, jex_core.ClosedJaxpr) else sub


def _dot_flops(eqn) -> float:
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
  # batch x contract x lhs_free x rhs_free multiply-adds.
  return 2.0 * math.prod(lhs) * math.prod(rhs_free)


def _value(var, known: Known):
  if isinstance(var, jex_core.Literal):
    return var.val
  return known.get(var)


def _fit(value, var, eqn):
  """value as `var` holds it, or None. Across a shard_map boundary a shape changes by whole
  shards: going in, the body gets shard 0's block; coming out, every shard's block is the same
  (the constants followed here, a kernel's mask tables, are alike on every shard)."""
  shape = getattr(var.aval, "shape", None)
  if value is None or np.shape(value) == shape:
    return value
  if eqn.primitive.name != "shard_map" or len(np.shape(value)) != len(shape):
    return None
  value = np.asarray(value)
  if all(s and v % s == 0 for v, s in zip(value.shape, shape)):
    return value[tuple(slice(0, s) for s in shape)]
  if all(v and s % v == 0 for v, s in zip(value.shape, shape)):
    return np.tile(value, [s // v for v, s in zip(value.shape, shape)])
  return None


def _constant_operands(eqn) -> list:
  """The operands of eqn that hold the same value at every run of its sub-jaxprs, aligned with
  their leading invars: a loop's carry and scanned slices change, its consts do not."""
  name = eqn.primitive.name
  if name == "scan":
    return eqn.invars[:eqn.params["num_consts"]]
  if name == "cond":
    return eqn.invars[1:]  # operand 0 picks the branch
  if name == "while":
    return []  # its cond and body take different consts: not followed
  return eqn.invars


def _inner_known(sub, eqn, known: Known) -> Known:
  """What sub (a sub-jaxpr of eqn) knows of its invars and its own consts."""
  inner = {}
  if isinstance(sub, jex_core.ClosedJaxpr):
    inner.update(zip(sub.jaxpr.constvars, sub.consts))
    sub = sub.jaxpr
  for outer, var in zip(_constant_operands(eqn), sub.invars):
    value = _fit(_value(outer, known), var, eqn)
    if value is not None:
      inner[var] = value
  return inner


def _outer_known(sub, eqn, inner: Known) -> Known:
  """The outputs of eqn that its sub-jaxpr passes through unchanged from a constant: how a
  kernel's mask tables reach the backward pass (residuals of the forward shard_map)."""
  if eqn.primitive.name in ("scan", "cond", "while"):
    return {}
  outer = {}
  for var, out in zip(_jaxpr(sub).outvars, eqn.outvars):
    value = _fit(_value(var, inner), out, eqn)
    if value is not None:
      outer[out] = value
  return outer


def _splash_block_share(eqn, known: Known) -> float | None:
  """The share of a splash kernel's grid steps that run: the non-empty entries of its block mask
  (operand 1, after data_next), or None when the mask is not a constant."""
  block_mask = _value(eqn.invars[1], known)
  if block_mask is None:
    return None
  return np.count_nonzero(block_mask) / np.size(block_mask)


def _pallas_count(eqn, known: Known) -> FlopCount:
  body = _count(eqn.params["jaxpr"], {})
  steps = math.prod(eqn.params["grid_mapping"].grid)
  if not eqn.params["name"].startswith("splash_mha"):
    return body.times(steps)
  share = _splash_block_share(eqn, known)
  if share is None:
    return body.times(steps) + FlopCount(0.0, unmasked_kernels=1)
  return body.times(steps * share)


def _runs(eqn) -> int:
  """How often eqn runs its sub-jaxprs: a scan's length; a shard_map's body once per shard of
  its manual mesh axes (the body has one shard's shapes)."""
  if eqn.primitive.name == "scan":
    return eqn.params["length"]
  if eqn.primitive.name == "shard_map":
    mesh = eqn.params["mesh"]
    return math.prod(mesh.shape[axis] for axis in eqn.params["newly_manual_axes"])
  return 1


def _count(jaxpr, known: Known) -> FlopCount:
  total = FlopCount(0.0)
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += FlopCount(_dot_flops(eqn))
    elif name == "pallas_call":
      total += _pallas_count(eqn, known)
    elif name == "cond":
      branches = [_count(_jaxpr(j), _inner_known(j, eqn, known))
                  for j in _sub_jaxprs(eqn.params["branches"])]
      total += FlopCount(*(max(field) for field in zip(*map(dataclasses.astuple, branches))))
    elif name == "while":
      body, cond = (_count(_jaxpr(j), _inner_known(j, eqn, known))
                    for j in (eqn.params["body_jaxpr"], eqn.params["cond_jaxpr"]))
      total += body + cond + FlopCount(0.0, unbounded_loops=1)
    else:
      for sub in (j for v in eqn.params.values() for j in _sub_jaxprs(v)):
        inner = _inner_known(sub, eqn, known)
        total += _count(_jaxpr(sub), inner).times(_runs(eqn))
        known.update(_outer_known(sub, eqn, inner))
  return total


def count_flops(fn: Callable, *args: Any) -> FlopCount:
  """Matmul FLOPs of one call of fn(*args); args may be ShapeDtypeStructs (nothing runs)."""
  closed = jax.make_jaxpr(fn)(*args)
  return _count(closed.jaxpr, dict(zip(closed.jaxpr.constvars, closed.consts)))
