"""CPU train-step throughput of the speech LM: phase 1 (text loss only) vs phase 2 (all losses).

One train step is `jax.value_and_grad` of `mimo_jax.lm.loss.loss` plus an `optax.adamw` update,
jitted once with the parameters and optimizer state donated, then timed to completion
(`block_until_ready`). Two model sizes, random fp32 weights and fp32 compute:

  tiny   `config.tiny()`, batch 4 x 64 LLM positions
  100m   hidden 512, 12 layers, FFN 2048, vocab 32000, 4-layer patch decoder (~88M parameters),
         batch 2 x 256 LLM positions

and, for each, the steps

  understanding   phase 1: text cross-entropy only; the patch decoder is never run
  generation      phase 2: text + the 8 audio channels through the teacher-forced patch decoder

plus, for 100m, phase 1 with the text cross-entropy in rematerialised chunks (`text_chunk_size`).
Batches use the official [b, 1 + 8, 4 * P] layout with about half the positions audio patches.

Throughput is in LLM positions/s (one text token or one 4-frame audio patch each, 6.25 Hz) and in
frames/s (= 4 x positions/s, the 25 Hz codec frame rate). The headline is the phase-2 / phase-1
step-time ratio. The runs of one model are timed in interleaved rounds (one timed call of each
per round: 1 step for 100m, 20 for tiny) so that they share the same minutes of machine time. The
machine may be shared, so every call also records the CPU-seconds other processes and the
hypervisor took meanwhile (from /proc/stat, against this process's own rusage); medians are over
the calls where that was at most 5% of the machine, or over all calls where fewer than 3 were
that clean.
Results go to experiments/results/lm_cpu.{json,md}.

Run from the repository root:

  python experiments/bench/lm_cpu.py [--warmup 2 --repeats 8 --models tiny,100m]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchlib import (CLEAN_SHARE, cpu_seconds, is_clean, load_since, machine_info,
                      time_interleaved, write_results)
from mimo_jax import config
from mimo_jax.config import LossConfig, MimoAudioConfig
from mimo_jax.lm import loss, model
from mimo_jax.nn.params import init_params

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results")
EMPTY_ID = 7  # stands in for `<|empty|>`; any id below vocab_size works
AUDIO_SHARE = 0.5
CHUNK_SIZE = 64
LEARNING_RATE = 1e-4
# With fewer clean calls than this, a run's median is over all its calls (the json says so).
MIN_CLEAN_CALLS = 3


@dataclasses.dataclass(frozen=True)
class BenchModel:
  cfg: MimoAudioConfig
  rows: int
  positions: int
  runs: dict[str, LossConfig]
  # Train steps per timed call: enough that a call spans many /proc/stat ticks (10 ms).
  steps_per_call: int


def models() -> dict[str, BenchModel]:
  phases = {"understanding": LossConfig("understanding"), "generation": LossConfig("generation")}
  cfg_100m = MimoAudioConfig(
      hidden_size=512, num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=4,
      head_dim=64, intermediate_size=2048, vocab_size=32000, local_dim=256, local_layers=4,
      local_attn_heads=16, local_ffn_dim=1024, input_local_layers=2, input_local_dim=256,
      dtype="float32", param_dtype="float32")
  chunked = {f"understanding chunk{CHUNK_SIZE}":
             LossConfig("understanding", text_chunk_size=CHUNK_SIZE)}
  return {"tiny": BenchModel(config.tiny(), rows=4, positions=64, runs=phases, steps_per_call=20),
          "100m": BenchModel(cfg_100m, rows=2, positions=256, runs={**phases, **chunked},
                        steps_per_call=1)}


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="tiny,100m", help="comma-separated: tiny, 100m")
  parser.add_argument("--warmup", type=int, default=2, help="untimed rounds after compilation")
  parser.add_argument("--repeats", type=int, default=8, help="timed rounds")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--results-dir", default=RESULTS_DIR)
  return parser.parse_args()


def interleaved_batch(cfg: MimoAudioConfig, rows: int, positions: int,
                      rng: np.random.Generator) -> np.ndarray:
  """input_ids [rows, 1 + c, g * positions]: random text tokens and audio patches."""
  g, c = cfg.group_size, cfg.audio_channels
  empty_codes = np.asarray(cfg.speech_zeroemb_idx)
  ids = np.full((rows, 1 + c, g * positions), -100, np.int32)
  ids[:, 1:] = empty_codes[:, None]
  is_audio = rng.random((rows, positions)) < AUDIO_SHARE
  text = rng.integers(EMPTY_ID + 1, cfg.vocab_size, (rows, positions))
  ids[:, 0, ::g] = np.where(is_audio, EMPTY_ID, text)
  codes = rng.integers(0, empty_codes[:, None, None], (rows, c, positions, g))
  audio_cols = np.repeat(is_audio, g, axis=1)[:, None, :]
  ids[:, 1:] = np.where(audio_cols, codes.reshape(rows, c, -1), ids[:, 1:])
  return ids


def count_params(params) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(params))


def param_breakdown(params: dict) -> dict[str, int]:
  """Parameter counts of the backbone (with text embeddings and lm_head), the patch encoder (with
  the speech embeddings, which the patch decoder shares) and the patch decoder."""
  encoder = ("input_local_transformer", "speech_embeddings", "speech_group_downcast")
  decoder = ("local_transformer", "local_transformer_lm_heads", "hidden_states_downcast",
             "speech_embeddings_to_local")
  parts = {"patch_encoder": encoder, "patch_decoder": decoder}
  out = {name: sum(count_params(params[k]) for k in keys if k in params)
         for name, keys in parts.items()}
  out["backbone"] = count_params(params) - sum(out.values())
  return out


def train_step(cfg: MimoAudioConfig, loss_cfg: LossConfig,
               optimizer: optax.GradientTransformation) -> Callable:
  def step(params, opt_state, batch):
    (total, _), grads = jax.value_and_grad(
        lambda p: loss.loss(p, cfg, loss_cfg, batch, EMPTY_ID), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, total
  return jax.jit(step, donate_argnums=(0, 1))


def prepare_run(cfg: MimoAudioConfig, loss_cfg: LossConfig, params: dict, batch: dict,
                n_steps: int) -> tuple[Callable[[], dict], dict]:
  """Compiles one train step; returns a call that runs n_steps steps (recording the last loss)
  and compile facts."""
  optimizer = optax.adamw(LEARNING_RATE)
  state = {"params": jax.tree.map(jnp.copy, params)}
  state["opt"] = optimizer.init(state["params"])
  start = time.perf_counter()
  compiled = train_step(cfg, loss_cfg, optimizer).lower(
      state["params"], state["opt"], batch).compile()
  facts = {"compile_s": time.perf_counter() - start,
           "temp_bytes": compiled.memory_analysis().temp_size_in_bytes}

  def run() -> dict:
    for _ in range(n_steps):
      state["params"], state["opt"], total = compiled(state["params"], state["opt"], batch)
    return {"loss": float(total.block_until_ready())}
  return run, facts


def summarise(calls: list[dict], positions: int, group_size: int, steps_per_call: int,
              cores: int) -> dict:
  """Per-step times: median (over the clean calls if enough), min, and our median CPU-seconds
  (which others' load changes far less than the wall time)."""
  clean = [c["s"] / steps_per_call for c in calls if is_clean(c, cores)]
  every = [c["s"] / steps_per_call for c in calls]
  times = clean if len(clean) >= MIN_CLEAN_CALLS else every
  median = statistics.median(times)
  own_cpu = statistics.median(c["own_cpu_s"] / steps_per_call for c in calls)
  return {"median_s": median, "min_s": min(every), "median_own_cpu_s": own_cpu,
          "median_over": "clean" if times is clean else "all",
          "clean_calls": len(clean), "positions_per_s": positions / median,
          "frames_per_s": group_size * positions / median,
          "losses_finite": all(np.isfinite(c["loss"]) for c in calls), "calls": calls}


def step_ratios(results: dict, calls: dict[str, list], num: str, den: str) -> dict[str, float]:
  """num / den step time three ways: ratio of the medians, median over rounds of the ratio of the
  two calls in that round, and ratio of our median CPU-seconds."""
  return {"median": results[num]["median_s"] / results[den]["median_s"],
          "paired": statistics.median(a["s"] / b["s"] for a, b in zip(calls[num], calls[den])),
          "own_cpu": results[num]["median_own_cpu_s"] / results[den]["median_own_cpu_s"]}


def bench_model(spec: BenchModel, args: argparse.Namespace, cores: int) -> dict:
  cfg = spec.cfg
  params = init_params(model.param_specs(cfg), jax.random.key(args.seed), jnp.float32)
  batch = {"input_ids": jnp.asarray(interleaved_batch(
      cfg, spec.rows, spec.positions, np.random.default_rng(args.seed)))}
  n_params, breakdown = count_params(params), param_breakdown(params)
  print(f"parameters: {n_params:,} {breakdown}; input_ids {tuple(batch['input_ids'].shape)}")
  runs, compiled = {}, {}
  for name, loss_cfg in spec.runs.items():
    runs[name], compiled[name] = prepare_run(cfg, loss_cfg, params, batch, spec.steps_per_call)
    print(f"  compiled {name}: {compiled[name]['compile_s']:.1f}s")
  del params
  before = cpu_seconds()
  calls = time_interleaved(runs, args.warmup, args.repeats, cores)
  load = load_since(before)
  positions = spec.rows * spec.positions
  results = {name: {**summarise(c, positions, cfg.group_size, spec.steps_per_call, cores),
                    **compiled[name],
                    "loss_cfg": dataclasses.asdict(spec.runs[name])}
             for name, c in calls.items()}
  ratios = {f"{name}/understanding": step_ratios(results, calls, name, "understanding")
            for name in results if name != "understanding"}
  return {"config": dataclasses.asdict(cfg), "param_count": n_params,
          "param_breakdown": breakdown,
          "input_ids_shape": list(batch["input_ids"].shape), "rows": spec.rows,
          "positions_per_row": spec.positions, "steps_per_call": spec.steps_per_call,
          "results": results, "ratios": ratios,
          "timing_load": {**load, "others_share": load["others_cpu_s"] / (load["s"] * cores)}}


def versions() -> dict:
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib"), "optax": optax.__version__,
          "numpy": np.__version__, "jax_backend": jax.default_backend()}


def model_line(name: str, report: dict) -> str:
  c, b = report["config"], report["param_breakdown"]
  return (f"- **{name}**: {report['param_count']:,} parameters (backbone {b['backbone']:,} incl. "
          f"embeddings and lm_head, patch encoder {b['patch_encoder']:,}, patch decoder "
          f"{b['patch_decoder']:,}). Backbone hidden {c['hidden_size']}, "
          f"{c['num_hidden_layers']} layers, {c['num_attention_heads']} heads / "
          f"{c['num_key_value_heads']} KV, head_dim {c['head_dim']}, FFN "
          f"{c['intermediate_size']}, vocab {c['vocab_size']}; patch encoder "
          f"{c['input_local_layers']} x {c['input_local_dim']}; patch decoder "
          f"{c['local_layers']} x {c['local_dim']} (FFN {c['local_ffn_dim']}, "
          f"{c['local_attn_heads']} heads). Batch {report['rows']} x "
          f"{report['positions_per_row']} positions, input_ids {report['input_ids_shape']}.")


def result_rows(name: str, report: dict) -> list[str]:
  return [f"| {name} | {run} | {x['median_s']:.3f} | {x['min_s']:.3f} | "
          f"{x['median_own_cpu_s']:.3f} | {x['positions_per_s']:,.0f} | {x['frames_per_s']:,.0f} | "
          f"{x['clean_calls']}/"
          f"{len(x['calls'])} | {x['compile_s']:.1f} | {x['temp_bytes'] / 2**20:,.0f} |"
          for run, x in report["results"].items()]


def ratio_lines(name: str, report: dict) -> list[str]:
  return [f"| {name} | {key} | **{r['median']:.2f}x** | {r['paired']:.2f}x | {r['own_cpu']:.2f}x |"
          for key, r in report["ratios"].items()]


def contention_warnings(runs: dict[str, dict]) -> list[str]:
  lines = []
  for name, r in runs.items():
    if any(x["median_over"] == "all" for x in r["results"].values()):
      lines += ["", f"**{name}: some run had fewer than {MIN_CLEAN_CALLS} clean calls, so its "
                "times are for a shared machine and slower than an idle one would give; trust the "
                "ratios more than the absolute numbers.**"]
  return lines


def markdown(report: dict) -> str:
  m, v, runs = report["machine"], report["versions"], report["models"]
  load_lines = [f"- {name}: others {r['timing_load']['others_cpu_s']:.0f} CPU-s vs ours "
                f"{r['timing_load']['own_cpu_s']:.0f} CPU-s over {r['timing_load']['s']:.0f}s "
                f"of timing = {r['timing_load']['others_share']:.0%} of the machine's "
                f"{m['cores_usable']} cores" for name, r in runs.items()]
  lines = [
      "# Speech LM train-step throughput on CPU: phase 1 vs phase 2",
      "",
      f"CPU only (no accelerator): {m['cpu_model']} ({m['cpu_family_model']}), "
      f"{m['cores_usable']} usable cores, {m['memory_gib']:.0f} GiB, "
      f"{'KVM guest' if m['hypervisor'] else 'bare metal'}; SIMD: {' '.join(m['simd_flags'])}. "
      f"Run {report['date']}.",
      "",
      "Train step = `jax.value_and_grad(mimo_jax.lm.loss.loss)` + `optax.adamw` update, one jit "
      "with params and optimizer state donated; fp32 params and compute, no remat; random "
      f"weights; {AUDIO_SHARE:.0%} of positions are audio patches. "
      f"{report['warmup']} warm-up + {report['repeats']} timed interleaved rounds per model. "
      "Both phases update every parameter with adamw (in phase 1 the patch decoder's gradients are "
      "zero, but weight decay still moves it), so the optimizer's cost is the same in both.",
      "",
      *(model_line(name, r) for name, r in runs.items()),
      "",
      "Positions are LLM positions (6.25 Hz: one text token or one 4-frame patch); frames/s = 4 "
      "x positions/s (25 Hz codec frames; text positions count as 4 frames too). Our CPU-s/step "
      "is the CPU time this process (all its threads) used per step: on an idle machine about "
      f"{m['cores_usable']} x the wall time at best; when others take cores our wall time grows "
      "but our CPU-s much less.",
      "",
      "| model | run | median s/step | min s/step | our CPU-s/step | positions/s | frames/s | "
      "clean calls | compile s | XLA temp MiB |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
      *(row for name, r in runs.items() for row in result_rows(name, r)),
      "",
      "Step-time ratios (>1: slower than phase 1 plain): of the median step times; median over "
      "rounds of the two steps' ratio in the same round; of our CPU-seconds per step.",
      "",
      "| model | ratio | of medians | per-round (median) | of our CPU-s |",
      "|---|---|---:|---:|---:|",
      *(line for name, r in runs.items() for line in ratio_lines(name, r)),
      "",
      "## Load on the machine",
      "",
      "Other engineers ran tests on this machine during the run. CPU-seconds taken by other "
      "processes (plus hypervisor steal) during the timed rounds, from /proc/stat minus this "
      "process's own rusage:",
      "",
      *load_lines,
      "",
      "Each timed call runs " + ", ".join(f"{r['steps_per_call']} step(s) for {name}"
                                          for name, r in runs.items()) + ". "
      f"A call is clean when others took at most {CLEAN_SHARE:.0%} of the machine during it; "
      f"medians are over the clean calls where a run has at least {MIN_CLEAN_CALLS}, otherwise "
      "over all its calls (the json says which, and lists every call with the CPU-seconds others "
      "took). Min is over all calls. The runs of a model are interleaved, so contention hits "
      "them alike on average, and the per-round ratios are the most robust comparison.",
      *contention_warnings(runs),
      "",
      f"Versions: jax {v['jax']}, jaxlib {v['jaxlib']}, optax {v['optax']}, numpy "
      f"{v['numpy']}, python {v['python']}. XLA CPU default thread pool; env {m['env']}.",
      "",
      f"Command: `{report['command']}`",
      "",
  ]
  return "\n".join(lines)


def print_table(runs: dict[str, dict]) -> None:
  print(f"\n{'model':<6} {'run':<22} {'median s':>9} {'min s':>8} {'CPU-s':>7} {'pos/s':>8} "
        f"{'frames/s':>9} {'clean':>6}")
  for name, r in runs.items():
    for run, x in r["results"].items():
      print(f"{name:<6} {run:<22} {x['median_s']:>9.3f} {x['min_s']:>8.3f} "
            f"{x['median_own_cpu_s']:>7.3f} "
            f"{x['positions_per_s']:>8.0f} {x['frames_per_s']:>9.0f} "
            f"{x['clean_calls']:>3}/{len(x['calls'])}")
    for key, ratio in r["ratios"].items():
      print(f"{name:<6} {key}: {ratio['median']:.2f}x (per-round {ratio['paired']:.2f}x, "
            f"our CPU-s {ratio['own_cpu']:.2f}x)")


def main() -> None:
  args = parse_args()
  specs = models()
  cores = len(os.sched_getaffinity(0))
  runs = {}
  for name in args.models.split(","):
    print(f"== {name}")
    runs[name] = bench_model(specs[name], args, cores)
  report = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": shlex.join(["python", *sys.argv]),
      "warmup": args.warmup, "repeats": args.repeats, "seed": args.seed, "empty_id": EMPTY_ID,
      "audio_share": AUDIO_SHARE, "learning_rate": LEARNING_RATE, "clean_share": CLEAN_SHARE,
      "min_clean_calls": MIN_CLEAN_CALLS, "models": runs,
      "machine": machine_info(), "versions": versions(),
  }
  print_table(runs)
  write_results(report, markdown(report), args.results_dir, "lm_cpu")


if __name__ == "__main__":
  main()
