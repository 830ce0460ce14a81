"""Where the CPU backbone's time goes: each matmul of `backbone_cpu.py`'s forward, XLA vs torch.

`backbone_cpu.py` times the whole forward (ours 0.91x transformers, fp32). This script times, in
isolation and interleaved, every matrix product that forward makes (same shapes, fp32, batch x seq
tokens): the attention and MLP projections of one layer, the attention score and value products,
and the logits. For each it reports GFLOP/s of `jax.jit(jnp.einsum)` and of `torch.matmul` and
their ratio, then the forward's matmul time summed over its layers for both libraries beside the
whole forward (timed in the same rounds). The rest of the forward (norms, RoPE, softmax,
embedding gather) is what the sum leaves out. The machine's nominal fp32 peak (cores x FMA lanes
x 2 x clock) is the ceiling both are held to.

Run from the repository root (set XLA_FLAGS to compare XLA:CPU options; it is recorded):

  python experiments/bench/cpu_matmul.py [--batch 4 --seq 512 --repeats 8 --tag NAME]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

import backbone_cpu
from benchlib import machine_info, median_over_clean, time_interleaved, write_results

# fp32 FLOPs per cycle per core: 2 FMA units x 8 lanes (AVX2) x 2 (multiply and add).
FLOPS_PER_CYCLE = {"avx512f": 64, "avx2": 32}


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=8)
  parser.add_argument("--tag", default="", help="suffix of the results' file names")
  parser.add_argument("--results-dir", default=backbone_cpu.RESULTS_DIR)
  return parser.parse_args()


def products(cfg, batch: int, seq: int) -> list[tuple[str, str, tuple, tuple, int]]:
  """(name, einsum, lhs shape, rhs shape, times per forward) of every matmul of the forward."""
  t, d, f, v = batch * seq, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  h, k, hd, layers = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                      cfg.num_hidden_layers)
  return [
      ("q, o proj", "td,de->te", (t, d), (d, h * hd), 2 * layers),
      ("k, v proj", "td,de->te", (t, d), (d, k * hd), 2 * layers),
      ("gate, up proj", "td,df->tf", (t, d), (d, f), 2 * layers),
      ("down proj", "tf,fd->td", (t, f), (f, d), layers),
      ("scores q.k", "bhqd,bhkd->bhqk", (batch, h, seq, hd), (batch, h, seq, hd), layers),
      ("weights.v", "bhqk,bhkd->bhqd", (batch, h, seq, seq), (batch, h, seq, hd), layers),
      ("logits", "td,dv->tv", (t, d), (d, v), 1),
  ]


def flops(equation: str, lhs: tuple, rhs: tuple) -> int:
  """2 x the product of every index's size (each index counted once)."""
  inputs, _ = equation.split("->")
  sizes = {}
  for names, shape in zip(inputs.split(","), (lhs, rhs)):
    sizes.update(zip(names, shape))
  return 2 * int(np.prod(list(sizes.values())))


def matmul_calls(equation: str, lhs: tuple, rhs: tuple,
                 rng: np.random.Generator) -> dict[str, Callable]:
  a, b = (rng.standard_normal(s, dtype=np.float32) for s in (lhs, rhs))
  a_jax, b_jax = jnp.asarray(a), jnp.asarray(b)
  fn = jax.jit(lambda x, y: jnp.einsum(equation, x, y)).lower(a_jax, b_jax).compile()
  a_torch, b_torch = torch.from_numpy(a), torch.from_numpy(b)
  return {"xla": lambda: fn(a_jax, b_jax).block_until_ready(),
          "torch": lambda: torch.einsum(equation, a_torch, b_torch)}


def nominal_peak(machine: dict) -> float:
  """fp32 FLOP/s of the usable cores at the reported clock, with the widest FMA they have."""
  width = next((n for flag, n in FLOPS_PER_CYCLE.items() if flag in machine["simd_flags"]), 8)
  with open("/proc/cpuinfo") as f:
    mhz = next(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
  return machine["cores_usable"] * width * mhz * 1e6


def main() -> None:
  args = parse_args()
  cfg = backbone_cpu.bench_config()
  cores = len(os.sched_getaffinity(0))
  machine = machine_info(torch_num_threads=torch.get_num_threads())
  peak = nominal_peak(machine)
  rng = np.random.default_rng(0)
  rows, sums = [], {"xla": 0.0, "torch": 0.0}
  for name, equation, lhs, rhs, count in products(cfg, args.batch, args.seq):
    runs = time_interleaved(matmul_calls(equation, lhs, rhs, rng), args.warmup, args.repeats,
                            cores)
    n_flops = flops(equation, lhs, rhs)
    row = {"name": name, "einsum": equation, "lhs": lhs, "rhs": rhs, "per_forward": count,
           "flops": n_flops}
    for lib in ("xla", "torch"):
      seconds, clean = median_over_clean(runs[lib], cores)
      row[lib] = {"median_s": seconds, "gflops": n_flops / seconds / 1e9, "clean_calls": clean,
                  "calls": runs[lib]}
      sums[lib] += count * seconds
    row["xla_vs_torch"] = row["torch"]["median_s"] / row["xla"]["median_s"]
    rows.append(row)
    print(f"{name:<14} {equation:<18} xla {row['xla']['gflops']:6.1f} GFLOP/s  torch "
          f"{row['torch']['gflops']:6.1f}  xla/torch speed {row['xla_vs_torch']:.2f}x", flush=True)

  # The whole forward in the same process, for the share the matmuls take of it.
  params = backbone_cpu.random_params(cfg, 0)
  model = backbone_cpu.load_torch_model(params, cfg)
  tokens_bt = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq),
                                                dtype=np.int32)
  forward = {"xla": backbone_cpu.jax_forward(params, cfg, jnp.asarray(tokens_bt)),
             "torch": backbone_cpu.torch_forward(model, tokens_bt)}
  forward_runs = time_interleaved(forward, args.warmup, args.repeats, cores)
  whole = {lib: median_over_clean(forward_runs[lib], cores)[0] for lib in forward}
  total_flops = sum(r["flops"] * r["per_forward"] for r in rows)
  report = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": shlex.join(["python", *sys.argv]), "git_commit": backbone_cpu.git_commit(),
      "batch": args.batch, "seq": args.seq, "warmup": args.warmup, "repeats": args.repeats,
      "machine": machine, "versions": backbone_cpu.versions(), "nominal_peak_flops": peak,
      "products": rows, "matmul_s": sums, "forward_s": whole, "matmul_flops": total_flops,
      "load_average_end": os.getloadavg()[0],
  }
  write_results(report, markdown(report), args.results_dir,
                "cpu_matmul" + (f"_{args.tag}" if args.tag else ""))
  print(markdown(report))


def markdown(report: dict) -> str:
  m, peak = report["machine"], report["nominal_peak_flops"]
  lines = [
      "# The CPU backbone's matmuls: XLA vs torch (fp32)",
      "",
      f"{m['cpu_model']}, {m['cores_usable']} usable cores, SIMD {' '.join(m['simd_flags'])}; "
      f"nominal fp32 peak {peak / 1e9:.0f} GFLOP/s (cores x FMA lanes x 2 x clock). Run "
      f"{report['date']}, load average {report['load_average_end']:.2f} at the end. "
      f"Env: {m['env']}. Versions: jax {report['versions']['jax']}, torch "
      f"{report['versions']['torch']}.",
      "",
      f"Shapes of `backbone_cpu.py`'s forward (batch {report['batch']} x {report['seq']} "
      f"tokens); {report['warmup']} warm-up + {report['repeats']} interleaved rounds, medians "
      "over the uncontended calls.",
      "",
      "| matmul | einsum | per forward | XLA GFLOP/s | torch GFLOP/s | XLA speed / torch |",
      "|---|---|---:|---:|---:|---:|",
      *(f"| {r['name']} | `{r['einsum']}` | {r['per_forward']} | {r['xla']['gflops']:.1f} | "
        f"{r['torch']['gflops']:.1f} | {r['xla_vs_torch']:.2f}x |" for r in report["products"]),
      "",
      "| | XLA | torch |",
      "|---|---:|---:|",
      f"| the forward's matmuls, timed alone and summed (s) | {report['matmul_s']['xla']:.3f} | "
      f"{report['matmul_s']['torch']:.3f} |",
      f"| the whole forward (s) | {report['forward_s']['xla']:.3f} | "
      f"{report['forward_s']['torch']:.3f} |",
      f"| matmul share of the forward | "
      f"{report['matmul_s']['xla'] / report['forward_s']['xla']:.0%} | "
      f"{report['matmul_s']['torch'] / report['forward_s']['torch']:.0%} |",
      f"| matmul FLOP/s over the whole forward, share of peak | "
      f"{report['matmul_flops'] / report['forward_s']['xla'] / peak:.0%} | "
      f"{report['matmul_flops'] / report['forward_s']['torch'] / peak:.0%} |",
      "",
      f"Command: `{report['command']}` at commit {report['git_commit']}.",
      "",
  ]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
