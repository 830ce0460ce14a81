"""Compile a step for abstract TPU devices and report its per-chip memory, FLOPs and speed.

`plan_step` lowers and compiles a jitted step for ShapeDtypeStruct arguments that carry their
shardings, reads the per-device buffer sizes XLA assigned (`memory_analysis()`), and turns them
into a report: HBM per chip by part (parameters, optimizer state, batch, temporaries) against the
chip's capacity, FLOPs counted from the jaxpr, and the step time and tokens/s/chip predicted at a
stated MFU. A program that does not fit is a report with `fits: false` and the shortfall XLA
gives, never an exception.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Callable

import jax

from mimo_jax.plan import flops as flops_lib
from mimo_jax.plan.topology import GIB, Topology

_SIZE = r"([0-9.]+)\s*([KMGT]?)i?B?"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# The two forms libtpu uses for an HBM overflow at compile time.
_OOM_PATTERNS = (
    re.compile(rf"required for [^(]*\({_SIZE}\) exceeds available HBM \({_SIZE}\)"),
    re.compile(rf"Used {_SIZE} of {_SIZE} hbm"),
)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What to compile and how to read it.

  fn: the jitted step (in/out shardings set). args: its arguments as sharded ShapeDtypeStructs.
  parts: names for the leading arguments' leaves by role, e.g. {"params": tree, "optimizer
  state": tree, "batch": tree}; every leaf of args should be in exactly one part.
  tokens: LLM positions the step consumes (one text token or one audio patch each).
  flop_fn: the function whose jaxpr is counted (default fn), e.g. the same step with remat off
  for model FLOPs.
  """

  name: str
  fn: Callable
  args: tuple
  parts: dict[str, Any]
  tokens: int
  analytic_flops: float
  model_flop_fn: Callable | None = None
  notes: tuple[str, ...] = ()


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (its largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def parse_oom(message: str) -> dict[str, float] | None:
  """Required and available bytes from libtpu's RESOURCE_EXHAUSTED message, if it says them."""
  for pattern in _OOM_PATTERNS:
    if match := pattern.search(message):
      required = float(match.group(1)) * _UNITS[match.group(2)]
      available = float(match.group(3)) * _UNITS[match.group(4)]
      return {"required_bytes": required, "available_bytes": available,
              "shortfall_bytes": max(0.0, required - available)}
  return None


def plan_step(spec: StepSpec, topo: Topology, mesh: jax.sharding.Mesh, mfu: float) -> dict:
  """Compiles spec.fn for the mesh's abstract TPU devices; the report as a JSON-able dict."""
  chip = topo.chip
  report: dict[str, Any] = {
      "step": spec.name,
      "topology": {"name": topo.name, "grid": topo.topology_name, "num_slices": topo.num_slices,
                   "chips": topo.num_chips, "generation": chip.generation,
                   "hbm_per_chip_gib": chip.hbm_bytes / GIB,
                   "peak_bf16_tflops_per_chip": chip.peak_bf16_flops / 1e12},
      "mesh": dict(mesh.shape),
      "tokens_per_step": spec.tokens,
      "notes": list(spec.notes),
  }
  hw = flops_lib.count_flops(spec.fn, *spec.args)
  model = flops_lib.count_flops(spec.model_flop_fn, *spec.args) if spec.model_flop_fn else hw
  report["flops"] = {
      "jaxpr_flops": hw.flops, "jaxpr_model_flops": model.flops,
      "analytic_flops": spec.analytic_flops,
      "jaxpr_model_over_analytic": model.flops / spec.analytic_flops,
      "remat_overhead": hw.flops / model.flops, "unbounded_while_loops": hw.unbounded_loops,
      "unmasked_splash_kernels": hw.unmasked_kernels,
  }
  parts = {name: per_device_bytes(tree) for name, tree in spec.parts.items()}

  start = time.perf_counter()
  with jax.set_mesh(mesh):
    lowered = spec.fn.lower(*spec.args)
  lower_s = time.perf_counter() - start
  try:
    compiled = lowered.compile()
  except Exception as e:  # libtpu's JaxRuntimeError; only HBM overflow is a verdict
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    oom = parse_oom(str(e))
    report["compile"] = {"lower_s": lower_s, "compile_s": time.perf_counter() - start - lower_s}
    report["memory"] = {"parts_bytes": parts, "capacity_bytes": chip.hbm_bytes,
                        **(oom or {}), "xla_message": str(e).strip().splitlines()[0][:500]}
    report["fits"] = False
    report["speed"] = predict_speed(report, topo, mfu, sum(parts.values()))
    return report
  report["compile"] = {"lower_s": lower_s, "compile_s": time.perf_counter() - start - lower_s}
  stats = compiled.memory_analysis()
  arguments = stats.argument_size_in_bytes
  temp = stats.temp_size_in_bytes
  # Donated state is aliased to the outputs: count those bytes once.
  outputs = stats.output_size_in_bytes - stats.alias_size_in_bytes
  # XLA's own peak estimate can sit below the sum of its allocations (and libtpu may compile a
  # program whose temporaries alone exceed the chip): the verdict takes the larger.
  xla_peak = getattr(stats, "peak_memory_in_bytes", 0)
  peak = max(xla_peak, arguments + outputs + temp + stats.generated_code_size_in_bytes)
  report["memory"] = {
      "parts_bytes": parts, "arguments_bytes": arguments, "outputs_not_aliased_bytes": outputs,
      "temp_bytes": temp, "code_bytes": stats.generated_code_size_in_bytes,
      "xla_peak_bytes": xla_peak, "peak_bytes": peak,
      "capacity_bytes": chip.hbm_bytes, "free_bytes": chip.hbm_bytes - peak,
  }
  report["fits"] = peak <= chip.hbm_bytes
  if not report["fits"]:
    report["memory"]["shortfall_bytes"] = peak - chip.hbm_bytes
  report["speed"] = predict_speed(report, topo, mfu, arguments)
  return report


def predict_speed(report: dict, topo: Topology, mfu: float, read_bytes: float) -> dict:
  """Step time as the larger of the compute time at `mfu` and the time to read every argument
  byte once from HBM (what bounds a decode step: weights and KV cache are read for few tokens)."""
  chip = topo.chip
  compute_s = report["flops"]["jaxpr_model_flops"] / (topo.num_chips * chip.peak_bf16_flops * mfu)
  hbm_s = read_bytes / chip.hbm_bytes_per_s
  step_s = max(compute_s, hbm_s)
  return {"mfu": mfu, "compute_s": compute_s, "hbm_read_s": hbm_s,
          "bound": "compute" if compute_s >= hbm_s else "HBM bandwidth", "step_s": step_s,
          "tokens_per_s_per_chip": report["tokens_per_step"] / step_s / topo.num_chips}


def _gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def to_markdown(report: dict) -> str:
  """The report as a short Markdown page."""
  topo, mem, fl, sp = report["topology"], report["memory"], report["flops"], report["speed"]
  verdict = "fits" if report["fits"] else (
      "does NOT fit" + (f": short by {_gib(mem['shortfall_bytes'])} per chip"
                        if "shortfall_bytes" in mem else ""))
  lines = [
      f"# Plan: {report['step']} on {topo['name']} ({topo['grid']}, {topo['num_slices']} slice(s),"
      f" {topo['chips']} chips)", "",
      f"**Verdict: {verdict}** ({_gib(topo['hbm_per_chip_gib'] * GIB)} HBM per chip).", "",
      f"Mesh: {', '.join(f'{k}={v}' for k, v in report['mesh'].items())}; "
      f"{report['tokens_per_step']:,} tokens per step.", "",
      "| HBM per chip | |", "|---|---|",
  ]
  lines += [f"| {name} | {_gib(n)} |" for name, n in mem["parts_bytes"].items()]
  for key, label in (("arguments_bytes", "all arguments"), ("temp_bytes",
                                                              "temporaries (activations)"),
                     ("outputs_not_aliased_bytes", "outputs not aliased to donated inputs"),
                     ("peak_bytes", "**peak**"), ("required_bytes", "required (XLA)"),
                     ("capacity_bytes", "capacity"), ("free_bytes", "free"),
                     ("shortfall_bytes", "**shortfall**")):
    if key in mem:
      lines.append(f"| {label} | {_gib(mem[key])} |")
  if "xla_message" in mem:
    lines += ["", f"XLA: `{mem['xla_message']}`"]
  lines += [
      "", "| FLOPs per step | |", "|---|---|",
      f"| jaxpr, as compiled (with rematerialisation) | {fl['jaxpr_flops']:.4g} |",
      f"| jaxpr, model (no rematerialisation) | {fl['jaxpr_model_flops']:.4g} |",
      f"| analytic (matmul weights x tokens + attention) | {fl['analytic_flops']:.4g} |",
      f"| model / analytic | {fl['jaxpr_model_over_analytic']:.4f} |",
      "", f"Predicted: **{sp['step_s']:.3g} s per step, {sp['tokens_per_s_per_chip']:,.0f} "
      f"tokens/s/chip** ({sp['bound']} bound: {sp['compute_s']:.3g} s of matmuls at "
      f"{sp['mfu']:.0%} MFU, {sp['hbm_read_s']:.3g} s to read the arguments from HBM once).", "",
      f"Compiled on this host in {report['compile']['lower_s']:.1f} s (lower) + "
      f"{report['compile']['compile_s']:.1f} s (compile).",
  ]
  if report.get("host"):
    lines.append(f"Host: {report['host']}.")
  if report.get("command"):
    lines += ["", f"`{report['command']}`"]
  lines += [""] + [f"- {note}" for note in report["notes"]]
  return "\n".join(lines) + "\n"


def save(report: dict, path_prefix: str) -> list[str]:
  """Writes <prefix>.json and <prefix>.md; returns the paths."""
  os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
  paths = [path_prefix + ".json", path_prefix + ".md"]
  with open(paths[0], "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
  with open(paths[1], "w") as f:
    f.write(to_markdown(report))
  return paths
