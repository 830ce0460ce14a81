"""Throughput of the real train step (`mimo_jax.train.step`): tokens/s, step time, model FLOP/s
and, on a chip with a known peak, MFU.

The step is exactly what `python -m mimo_jax.train` runs: AdamW with per-group learning rates,
clipping, the NaN guard, state donated, on a mesh over every local device (one CPU device here;
a GPU or TPU host when run there). Two models:

  tiny   experiments/configs/tiny.py (fp32), batch 8 x 32 positions
  100m   hidden 512, 12 layers, FFN 2048, vocab 32000, 256-wide patch encoder (2 layers) and
         decoder (4 layers), ~88M parameters; batch 4 x 256 positions; bf16 compute over fp32
         master weights where the device is not a CPU, fp32 on CPU (no fast bf16 matmul)

each in phase 1 (`understanding`: text loss, patch decoder frozen) and phase 2 (`generation`: all
losses). Synthetic batches (half the positions audio patches). Tokens are LLM positions (one text
token or one 4-frame audio patch each). FLOPs are the analytic model count of
`mimo_jax.lm.flops.train_flops` (forward + backward, remat not counted).

Runs of one model are timed in interleaved rounds, and every call records the CPU-seconds other
processes took meanwhile (benchlib), since this machine is shared.

  python experiments/bench/train_step.py [--models tiny,100m --warmup 2 --repeats 6]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys

import jax
import numpy as np

from benchlib import cpu_seconds, is_clean, load_since, machine_info, time_interleaved, \
    write_results
from mimo_jax import sharding
from mimo_jax.lm import flops as lm_flops
from mimo_jax.train import config as train_config
from mimo_jax.train import data, metrics
from mimo_jax.train.state import TrainSetup, create_state
from mimo_jax.train.step import make_train_step

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RESULTS_DIR = os.path.join(ROOT, "experiments", "results")
MIN_CLEAN_CALLS = 3


def model_config(name: str, on_cpu: bool):
  cfg = train_config.load_file(os.path.join(ROOT, "experiments", "configs", "tiny.py"))
  if name == "100m":
    cfg.model.overrides = {
        "hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 64, "intermediate_size": 2048,
        "vocab_size": 32000, "local_dim": 256, "local_layers": 4, "local_attn_heads": 16,
        "local_ffn_dim": 1024, "input_local_layers": 2, "input_local_dim": 256}
    cfg.model.dtype = "float32" if on_cpu else "bfloat16"
    cfg.train.batch_size, cfg.train.positions = 4, 256
  cfg.train.steps = 1000
  return cfg


def prepare(cfg, phase: str, steps_per_call: int, mesh):
  cfg = cfg.copy_and_resolve_references()
  cfg.train.phase = phase
  setup = TrainSetup.from_config(cfg)
  t = cfg.train
  train_step = make_train_step(setup, mesh, t.batch_size, t.positions, cfg.data.empty_id)
  source = data.make_source(cfg, setup.model, mesh)
  batches = [next(source.iterator) for _ in range(4)]
  holder = {"state": create_state(setup, jax.random.key(0), mesh), "i": 0}
  compiled = train_step.fn.lower(train_step.abstract_state, train_step.abstract_batch).compile()

  def run() -> dict:
    for _ in range(steps_per_call):
      holder["state"], m = compiled(holder["state"], batches[holder["i"] % len(batches)])
      holder["i"] += 1
    return {"loss": float(m["loss"])}

  flops = lm_flops.train_flops(setup.model, setup.loss, t.batch_size, t.positions)
  n_params = sum(x.size for x in jax.tree.leaves(holder["state"]["params"]))
  return run, {"tokens_per_step": t.batch_size * t.positions, "flops_per_step": flops,
               "param_count": n_params, "batch": t.batch_size, "positions": t.positions,
               "dtype": setup.model.dtype}


def summarise(calls, facts, steps_per_call, cores, peak, n_chips) -> dict:
  clean = [c["s"] / steps_per_call for c in calls if is_clean(c, cores)]
  every = [c["s"] / steps_per_call for c in calls]
  times = clean if len(clean) >= MIN_CLEAN_CALLS else every
  step_s = statistics.median(times)
  own_cpu = statistics.median(c["own_cpu_s"] / steps_per_call for c in calls)
  out = {**facts, "median_step_s": step_s, "min_step_s": min(every),
         "median_own_cpu_s": own_cpu,
         "median_over": "clean" if times is clean else "all", "clean_calls": len(clean),
         "tokens_per_s": facts["tokens_per_step"] / step_s,
         "model_tflops_per_s": facts["flops_per_step"] / step_s / 1e12, "calls": calls}
  out["mfu"] = None if peak is None else facts["flops_per_step"] / step_s / (peak * n_chips)
  return out


def markdown(report: dict) -> str:
  m = report["machine"]
  rows = []
  for model, runs in report["models"].items():
    for phase, r in runs.items():
      mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
      rows.append(f"| {model} | {phase} | {r['param_count'] / 1e6:.1f}M | {r['dtype']} | "
                  f"{r['batch']} x {r['positions']} | {r['median_step_s']:.3f} | "
                  f"{r['median_own_cpu_s']:.3f} | "
                  f"{r['tokens_per_s']:,.0f} | {r['model_tflops_per_s'] * 1e3:,.1f} | {mfu} | "
                  f"{r['clean_calls']}/{len(r['calls'])} |")
  load = report["timing_load"]
  return "\n".join([
      "# Train step throughput (`mimo_jax.train.step`)",
      "",
      f"Device: {report['device']} x {report['n_devices']}; host CPU {m['cpu_model']}, "
      f"{m['cores_usable']} usable cores, {m['memory_gib']:.0f} GiB. Run {report['date']}, "
      f"git {report['git']}.",
      "",
      "The step `python -m mimo_jax.train` runs (AdamW per group, clipping, NaN guard, donated "
      "state), synthetic batches. Tokens = LLM positions (6.25 Hz). Model FLOPs: analytic "
      "(forward + backward, no remat). MFU needs the chip's peak (`metrics.PEAK_FLOPS`); CPUs have "
      "none, so it is n/a there. Our CPU-s/step is the CPU time this process used per step: "
      "other processes' load stretches the wall time far more than it.",
      "",
      "| model | phase | params | compute | batch | median s/step | our CPU-s/step | tokens/s | "
      "model GFLOP/s | MFU | clean calls |",
      "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
      *rows,
      "",
      f"Load: other processes took {load['others_cpu_s']:.0f} CPU-s while we used "
      f"{load['own_cpu_s']:.0f} over {load['s']:.0f} s of timing "
      f"({load['others_cpu_s'] / (load['s'] * m['cores_usable']):.0%} of the machine). A call is "
      "clean when others took at most 5% of the machine; medians are over clean calls when at "
      f"least {MIN_CLEAN_CALLS}, else over all (slower than an idle machine would give).",
      "",
      f"Command: `{report['command']}`",
      "",
  ])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="tiny,100m")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=6)
  parser.add_argument("--results-dir", default=RESULTS_DIR)
  parser.add_argument("--name", default="train_step")
  args = parser.parse_args()
  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  mesh = sharding.make_mesh("data:1,fsdp:-1,tensor:1")
  peak = metrics.peak_flops()
  cores = len(os.sched_getaffinity(0))
  report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", *sys.argv]), "device": device.device_kind,
            "n_devices": jax.device_count(), "peak_flops_per_chip": peak,
            "git": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
            "machine": machine_info(), "models": {}}
  before = cpu_seconds()
  for name in args.models.split(","):
    cfg = model_config(name, on_cpu)
    steps_per_call = 10 if name == "tiny" else 1
    runs, facts = {}, {}
    for phase in ("understanding", "generation"):
      runs[phase], facts[phase] = prepare(cfg, phase, steps_per_call, mesh)
      print(f"{name} {phase}: compiled; {facts[phase]['param_count']:,} params")
    calls = time_interleaved(runs, args.warmup, args.repeats, cores)
    report["models"][name] = {
        phase: summarise(calls[phase], facts[phase], steps_per_call, cores, peak,
                         jax.device_count()) for phase in runs}
    for phase, r in report["models"][name].items():
      print(f"{name} {phase}: {r['median_step_s']:.3f} s/step, {r['tokens_per_s']:,.0f} tok/s, "
            f"{r['model_tflops_per_s'] * 1e3:,.1f} GFLOP/s, mfu {r['mfu']}")
  report["timing_load"] = load_since(before)
  write_results(report, markdown(report), args.results_dir, args.name)


if __name__ == "__main__":
  np.set_printoptions(precision=4)
  main()
