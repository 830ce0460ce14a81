"""FLOPs of a step, counted from its jaxpr (checked against the analytic `mimo_jax.lm.flops`).

XLA's `cost_analysis()` on TPU targets counts a loop body once, so a scanned 36-layer stack
reports about 1/36 of its work. Counting the jaxpr instead, each `scan` body is multiplied by its
trip count, a `cond` takes its most expensive branch, and rematerialised (`checkpoint`) regions
count as often as they appear, so a rematerialised step counts its recomputation too. Only matrix
products (`dot_general`) are counted: they are what the MXU does and what MFU is measured on;
elementwise work is a few percent at LLM widths.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core



@dataclasses.dataclass(frozen=True)
class FlopCount:
  flops: float
  # `while` loops whose trip count the jaxpr does not fix: counted once each (an undercount).
  unbounded_loops: int = 0


def _sub_jaxprs(value: Any) -> list:
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _dot_flops(eqn) -> float:
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
  # batch x contract x lhs_free x rhs_free multiply-adds.
  return 2.0 * math.prod(lhs) * math.prod(rhs_free)


def _count(jaxpr) -> tuple[float, int]:
  flops, unbounded = 0.0, 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      flops += _dot_flops(eqn)
      continue
    if name == "cond":
      counts = [_count(j) for j in _sub_jaxprs(eqn.params["branches"])]
      flops += max(c[0] for c in counts)
      unbounded += max(c[1] for c in counts)
      continue
    if name == "while":
      body_flops, body_unbounded = _count(eqn.params["body_jaxpr"].jaxpr)
      cond_flops, cond_unbounded = _count(eqn.params["cond_jaxpr"].jaxpr)
      flops += body_flops + cond_flops
      unbounded += 1 + body_unbounded + cond_unbounded
      continue
    trips = eqn.params["length"] if name == "scan" else 1
    for sub in (j for v in eqn.params.values() for j in _sub_jaxprs(v)):
      sub_flops, sub_unbounded = _count(sub)
      flops += trips * sub_flops
      unbounded += sub_unbounded
  return flops, unbounded


def count_flops(fn: Callable, *args: Any) -> FlopCount:
  """Matmul FLOPs of one call of fn(*args); args may be ShapeDtypeStructs (nothing runs)."""
  closed = jax.make_jaxpr(fn)(*args)
  flops, unbounded = _count(closed.jaxpr)
  return FlopCount(flops, unbounded)
