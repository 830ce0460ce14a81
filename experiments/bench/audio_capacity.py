"""What running the patch encoder and patch decoder only on audio positions saves
(`config.train.audio_capacity`, issue 17 goal 1).

Three parts:
  7b        analytic FLOPs per phase-2 (and phase-1) step of the 7B recipe (2048 x 8192
            positions) per capacity (`mimo_jax.lm.flops.train_flops`), and the bytes per
            sequence of the patch decoder's fp32 head logits, the largest activation that scales
            with the patches the decoder runs on
  measured  on this CPU, the ~100M config of experiments/bench/train_step.py (fp32, batch 4 x 256,
            synthetic batches with half the positions audio): XLA's temporary bytes of the
            compiled loss + gradients and the largest |difference| of loss and gradients against
            the masked path (capacity 0), then the real train step timed in interleaved rounds
            (benchlib; the machine is shared, so each call records the CPU time others took)

  python experiments/bench/audio_capacity.py [--capacity 0.6 --warmup 1 --repeats 4]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys

import jax
import numpy as np

from benchlib import cpu_seconds, load_since, machine_info, time_interleaved, write_results
from mimo_jax import config, sharding
from mimo_jax.config import LossConfig
from mimo_jax.lm import flops as lm_flops
from mimo_jax.lm import loss, model
from mimo_jax.train import config as train_config
from mimo_jax.train import data
from mimo_jax.train.state import TrainSetup, create_state
from train_step import ROOT, RESULTS_DIR, model_config, prepare, summarise

CAPACITIES_7B = (0.0, 0.75, 0.6, 0.5, 0.3)


def analytic_7b() -> list[dict]:
  recipe = train_config.recipe_7b()
  cfg = config.preset("7b")
  b, p = recipe.train.batch_size, recipe.train.positions
  logit_bytes_per_patch = 4 * cfg.group_size * sum(cfg.speech_vocab_size)
  rows = []
  for phase in ("generation", "understanding"):
    full = lm_flops.train_flops(cfg, LossConfig(phase), b, p)
    backbone = lm_flops.backbone_train_flops(cfg, b, p)
    for capacity in CAPACITIES_7B:
      flops = lm_flops.train_flops(cfg, LossConfig(phase, audio_capacity=capacity), b, p)
      slots = model.audio_capacity(p, capacity)
      rows.append({"phase": phase, "capacity": capacity, "slots_per_sequence": slots,
                   "flops": flops, "audio_path_flops": flops - backbone,
                   "saved_vs_masked": 1 - flops / full,
                   "head_logit_bytes_per_sequence": (slots * logit_bytes_per_patch
                                                     if phase == "generation" else 0)})
  return rows


def measured_memory_and_difference(cfg, capacity: float) -> dict:
  """Compiles loss + gradients with and without the capacity on one synthetic batch."""
  cfg = cfg.copy_and_resolve_references()
  cfg.train.phase = "generation"
  setup = TrainSetup.from_config(cfg)
  mesh = sharding.make_mesh("data:1,fsdp:-1,tensor:1")
  params = create_state(setup, jax.random.key(0), mesh)["params"]
  batch = next(data.make_source(cfg, setup.model, mesh).iterator)
  text_bp, _ = model.split_channels(batch["input_ids"], setup.model)
  dropped = model.audio_slots(text_bp == cfg.data.empty_id, capacity).dropped
  out = {"dropped_inputs_in_batch": float(dropped)}
  results = {}
  for name, cap in (("masked", 0.0), ("gathered", capacity)):
    lcfg = LossConfig("generation", audio_capacity=cap)
    fn = jax.jit(jax.value_and_grad(
        lambda prm, bt: loss.loss(prm, setup.model, lcfg, bt, cfg.data.empty_id)[0]))
    compiled = fn.lower(params, batch).compile()
    out[f"{name}_temp_bytes"] = compiled.memory_analysis().temp_size_in_bytes
    results[name] = compiled(params, batch)
  (masked, masked_grads), (gathered, grads) = results["masked"], results["gathered"]
  out["loss"] = float(masked)
  out["loss_max_abs_diff"] = float(abs(gathered - masked))
  out["grad_max_abs_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(grads), jax.tree.leaves(masked_grads)))
  out["grad_max_abs"] = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(masked_grads))
  return out


def markdown(report: dict) -> str:
  rows_7b = [f"| {r['phase']} | {r['capacity'] or 'none (masked)'} | {r['slots_per_sequence']} | "
             f"{r['flops']:.3e} | {r['audio_path_flops']:.3e} | {r['saved_vs_masked']:.1%} | "
             f"{r['head_logit_bytes_per_sequence'] / 2**20:,.0f} |" for r in report["7b"]]
  m, cap = report["measured"], report["capacity"]
  t = report["timing"]
  load = report["timing_load"]
  cores = report["machine"]["cores_usable"]
  return "\n".join([
      "# Audio only where there is audio: the patch encoder and decoder at a capacity",
      "",
      f"Run {report['date']}, git {report['git']}, on {report['machine']['cpu_model']} "
      f"({cores} usable cores), shared with a running test suite and other engineers: "
      f"`uptime` before: {report['uptime_before']}; after: {report['uptime_after']}.",
      "",
      "## 7B recipe, analytic (`mimo_jax.lm.flops.train_flops`)",
      "",
      "2048 sequences x 8192 positions per optimizer step, forward + backward without remat. "
      "The capacity is the share of each sequence's positions the patch encoder and decoder "
      "run on; with no capacity they run on every position and text is masked. At a capacity "
      "equal to the data's audio share nothing is dropped and the losses are unchanged; set it "
      "a little above the largest per-sequence audio share of the data and watch the "
      "`audio_dropped_*` metrics (0 expected). Head logits: the patch decoder's fp32 logits "
      "(g x the 8 audio vocabularies per patch) of one sequence, the largest activation that "
      "scales with the patches. The 7B step's peak memory at a capacity was not compiled here "
      "(the planner's AOT compile of the phase-2 step takes 5-30 min on this shared machine).",
      "",
      "| phase | capacity | slots / sequence | FLOPs / step | encoder + decoder FLOPs | saved "
      "vs masked | head logits MiB / sequence |",
      "|---|---|---:|---:|---:|---:|---:|",
      *rows_7b,
      "",
      f"## Measured on this CPU: ~100M config, batch 4 x 256, phase 2, capacity {cap}",
      "",
      f"Synthetic batch with half the positions audio (Bernoulli per position); the capacity "
      f"drops {m['dropped_inputs_in_batch']:.0f} audio inputs in the measured batch.",
      "",
      f"- XLA temporary bytes of the compiled loss + gradients: "
      f"{m['masked_temp_bytes'] / 2**20:,.1f} MiB masked, {m['gathered_temp_bytes'] / 2**20:,.1f} "
      f"MiB gathered ({1 - m['gathered_temp_bytes'] / m['masked_temp_bytes']:.1%} less).",
      f"- Gathered vs masked (fp32): loss {m['loss']:.4f}, max |difference| "
      f"{m['loss_max_abs_diff']:.2e}; gradients max |difference| {m['grad_max_abs_diff']:.2e} "
      f"(largest gradient entry {m['grad_max_abs']:.2e}).",
      f"- Train step (`mimo_jax.train.step`, AdamW, donated state), median s/step over "
      f"{t['median_over']['masked']} / {t['median_over']['gathered']} calls: masked "
      f"{t['masked']:.3f}, gathered {t['gathered']:.3f} ({t['masked'] / t['gathered']:.2f}x); "
      f"our CPU-s/step {t['own_cpu']['masked']:.3f} vs {t['own_cpu']['gathered']:.3f}. "
      f"Analytic FLOPs/step {t['flops']['masked']:.3e} vs {t['flops']['gathered']:.3e} "
      f"({t['flops']['masked'] / t['flops']['gathered']:.2f}x).",
      "",
      f"Load: other processes took {load['others_cpu_s']:.0f} CPU-s while we used "
      f"{load['own_cpu_s']:.0f} over {load['s']:.0f} s of timing; wall times are stretched by "
      "that load, the CPU-s/step less so.",
      "",
      f"Command: `{report['command']}`",
      "",
  ])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--capacity", type=float, default=0.6)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=4)
  parser.add_argument("--results-dir", default=RESULTS_DIR)
  args = parser.parse_args()
  uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", *sys.argv]), "capacity": args.capacity,
            "git": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
            "machine": machine_info(), "uptime_before": uptime(), "7b": analytic_7b()}
  cfg = model_config("100m", on_cpu=True)
  report["measured"] = measured_memory_and_difference(cfg, args.capacity)
  print(report["measured"])
  mesh = sharding.make_mesh("data:1,fsdp:-1,tensor:1")
  runs, facts = {}, {}
  for name, cap in (("masked", 0.0), ("gathered", args.capacity)):
    variant = cfg.copy_and_resolve_references()
    variant.train.audio_capacity = cap
    runs[name], facts[name] = prepare(variant, "generation", 1, mesh)
  cores = len(os.sched_getaffinity(0))
  before = cpu_seconds()
  calls = time_interleaved(runs, args.warmup, args.repeats, cores)
  report["timing_load"] = load_since(before)
  summary = {name: summarise(calls[name], facts[name], 1, cores, None, 1) for name in runs}
  report["timing"] = {
      **{name: s["median_step_s"] for name, s in summary.items()},
      "own_cpu": {name: s["median_own_cpu_s"] for name, s in summary.items()},
      "median_over": {name: f"{s['clean_calls']} clean of {len(s['calls'])}"
                      if s["median_over"] == "clean" else f"all {len(s['calls'])}"
                      for name, s in summary.items()},
      "flops": {name: f["flops_per_step"] for name, f in facts.items()},
      "calls": calls}
  report["uptime_after"] = uptime()
  write_results(report, markdown(report), args.results_dir, "audio_capacity")


if __name__ == "__main__":
  main()
