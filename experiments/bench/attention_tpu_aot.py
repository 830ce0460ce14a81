"""Per-chip TPU memory of the backbone's attention: explicit-mask XLA vs the Pallas splash kernel.

Compiles, ahead of time for abstract TPU topologies (libtpu; no TPU attached), the gradient of a
7B-shaped backbone stack (d 4096, 32 query / 8 kv heads of 128, FFN 11008; `--layers` scanned
layers, full remat, bf16 compute over fp32 params) for each attention implementation and
sequence length, one sequence per chip (mesh fsdp over all chips), and records XLA's
`memory_analysis()` per chip: temp (activations and workspace), arguments, outputs, peak, and the
compile time. A case over the chip's HBM fails to compile with RESOURCE_EXHAUSTED; that is
recorded as its result. Only the attention differs between the xla and splash rows, so their
temp difference is the [b, heads, t, t] scores the splash kernel never holds.

Compiling runs on this host's CPU, which other work may share: each compile records the CPU
seconds other processes took meanwhile. Results go to
experiments/results/attention_tpu_aot.{json,md}, rewritten after every case; a run keeps the
file's other cases and replaces those it compiles again, so subsets can run one after another or
side by side.

Run from the repository root (slow: minutes of CPU per case):

  python experiments/bench/attention_tpu_aot.py [--topologies v5e:2x2 v5p:2x2x1 --seqs 2048 8192]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re

# libtpu takes a host-wide lock when it loads; compiling for abstract devices touches no TPU, so
# sharing it with another JAX process on the host is safe.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from benchlib import machine_info, timed_call, write_results  # noqa: E402
from mimo_jax import config as config_lib  # noqa: E402
from mimo_jax import sharding  # noqa: E402
from mimo_jax.nn.params import abstract_params, logical_axes  # noqa: E402
from mimo_jax.nn.stack import stack_forward, stack_param_specs  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results")
GIB = 2**30


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--topologies", nargs="+", default=["v5e:2x2", "v5p:2x2x1"],
                      help="jax topology grids (v5e:2x2 = 4 v5e chips, v5p:2x2x1 = 4 v5p chips)")
  parser.add_argument("--seqs", nargs="+", type=int, default=[8192, 2048])
  parser.add_argument("--impls", nargs="+", default=["splash", "xla"],
                      choices=config_lib.ATTENTION_IMPLS)
  parser.add_argument("--layers", type=int, default=2)
  return parser.parse_args()


def compile_case(topology: str, impl: str, seq: int, layers: int) -> dict:
  """Compiles one case; its per-chip memory in GiB, or the compiler's error."""
  devices = topologies.get_topology_desc(topology, platform="tpu").devices
  mesh = sharding.make_mesh("data:1,fsdp:-1,tensor:1", devices)
  model = config_lib.mimo_audio_7b(remat_policy="full", attention=impl)
  cfg = dataclasses.replace(model.backbone, n_layers=layers)
  specs = stack_param_specs(cfg)
  param_shardings = sharding.named_shardings(logical_axes(specs), mesh)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_params(specs), param_shardings)
  x_sharding = jax.NamedSharding(
      mesh, sharding.logical_to_spec(("batch", "length", "activation_embed")))
  x_btd = jax.ShapeDtypeStruct((len(devices), seq, cfg.d_model), jnp.bfloat16, sharding=x_sharding)

  def loss(p, x_btd):
    y_btd, _ = stack_forward(p, x_btd, cfg)
    return jnp.mean(jnp.square(y_btd.astype(jnp.float32)))

  grad_fn = jax.jit(jax.grad(loss), out_shardings=param_shardings)
  result = {"topology": topology, "device_kind": devices[0].device_kind, "chips": len(devices),
            "impl": impl, "seq": seq, "layers": layers, "date": _now()}

  def build():
    try:
      with jax.set_mesh(mesh):
        compiled = grad_fn.lower(params, x_btd).compile()
    except Exception as e:  # noqa: BLE001 (an over-budget compile is a result, not a crash)
      message = str(e)
      failed = {"ok": False, "error": message.splitlines()[0][:300]}
      used = re.search(r"Used ([\d.]+)([GM]) of ([\d.]+)([GM]) hbm", message)
      if used:
        to_gib = lambda v, unit: float(v) / (1 if unit == "G" else 1024)
        failed.update(needed_gib=to_gib(*used.group(1, 2)), hbm_gib=to_gib(*used.group(3, 4)))
      return failed
    mem = compiled.memory_analysis()
    return {"ok": True, "temp_gib": mem.temp_size_in_bytes / GIB,
            "argument_gib": mem.argument_size_in_bytes / GIB,
            "output_gib": mem.output_size_in_bytes / GIB,
            "peak_gib": mem.peak_memory_in_bytes / GIB,
            "pallas_kernels": compiled.as_text().count("tpu_custom_call")}

  result.update(timed_call(build))
  return result


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def merge_case(result: dict) -> list[dict]:
  """The results file's cases with `result` added (replacing an earlier run of the same case)."""
  path = os.path.join(RESULTS_DIR, "attention_tpu_aot.json")
  cases = []
  if os.path.exists(path):
    with open(path) as f:
      cases = json.load(f)["cases"]
  key = lambda r: (r["topology"], r["seq"], r["impl"], r["layers"])
  cases = [c for c in cases if key(c) != key(result)] + [result]
  return sorted(cases, key=lambda r: (r["topology"], r["layers"], -r["seq"], r["impl"]))


def to_markdown(report: dict) -> str:
  lines = [
      "# Backbone attention on TPU: per-chip memory, XLA vs splash (AOT)",
      "",
      f"Gradient of a 7B-shaped backbone stack ({report['layers']} scanned layers, full remat, "
      "bf16 compute, fp32 params; d 4096, 32/8 heads of 128, FFN 11008), one sequence per chip, "
      "mesh fsdp over all chips, compiled for abstract TPU devices with libtpu on a CPU host "
      f"(jax {jax.__version__}). Memory is XLA's `memory_analysis()` per chip. Updated "
      f"{report['date']}.",
      "",
      "| topology | seq | attention | temp GiB | args GiB | peak GiB | compile s | own CPU-s | "
      "others' CPU-s |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in report["cases"]:
    if r["layers"] != report["layers"]:
      continue
    if r["ok"]:
      mem = f"{r['temp_gib']:.2f} | {r['argument_gib']:.2f} | {r['peak_gib']:.2f}"
    else:
      needed = (f"does not fit: needs {r['needed_gib']:.1f} of {r['hbm_gib']:.1f} GiB"
                if "needed_gib" in r else f"failed: {r['error']}")
      mem = f"{needed} | | "
    lines.append(f"| {r['topology']} ({r['device_kind']}) | {r['seq']} | {r['impl']} | {mem} | "
                 f"{r['s']:.0f} | {r['own_cpu_s']:.0f} | {r['others_cpu_s']:.0f} |")
  m = report["machine"]
  lines += [
      "",
      "temp = activations and workspace of the step (what the attention implementation changes); "
      "args = this chip's shard of params and inputs. The full 36-layer model adds each layer's "
      "remat carry [seq, 4096] and the optimizer state on top; `python -m mimo_jax.plan` reports "
      "the whole train step.",
      "",
      f"Host: {m['cpu_model']}, {m['cores_usable']} usable cores, shared with other work: compile "
      "times are wall seconds under that contention (own CPU-s = the compile's CPU seconds; "
      "others' CPU-s = CPU seconds other processes and steal took during the compile).",
      "",
  ]
  return "\n".join(lines)


def main() -> None:
  args = parse_args()
  for topology in args.topologies:
    for seq in args.seqs:
      for impl in args.impls:
        result = compile_case(topology, impl, seq, args.layers)
        print(result)
        report = {"date": _now(), "jax": jax.__version__, "layers": args.layers,
                  "machine": machine_info(), "cases": merge_case(result)}
        write_results(report, to_markdown(report), RESULTS_DIR, "attention_tpu_aot")


if __name__ == "__main__":
  main()
