"""CPU forward throughput of our Qwen2 backbone against `transformers.Qwen2ForCausalLM`.

Builds a ~125M-parameter Qwen2 shape with random weights, exports them with
`mimo_jax.convert.hf.export_checkpoint` and loads the same weights into transformers (fp32, eval,
sdpa attention). After checking once that both give the same fp32 logits, it times full-sequence
forward passes (tokens -> logits for every position, no KV cache) on the same batch:

  ours fp32          jax.jit of `backbone.forward`, fp32 params and compute (the headline)
  ours bf16          the same with cfg.dtype="bfloat16" (params stay fp32, cast per layer)
  transformers fp32  torch.no_grad(), use_cache=False

The three are timed in interleaved rounds (one call of each per round) so that they share the same
minutes of machine time. The machine may be shared, so each call also records how much CPU other
processes (and the hypervisor) took meanwhile; medians are over the calls where that was under 5%
of the machine. Results go to experiments/results/backbone_cpu.{json,md}.

Run from the repository root:

  python experiments/bench/backbone_cpu.py [--batch 4 --seq 512 --warmup 2 --repeats 8]
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
import subprocess
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from benchlib import CLEAN_SHARE, is_clean, machine_info, time_interleaved, write_results
from mimo_jax.config import MimoAudioConfig
from mimo_jax.convert.hf import export_checkpoint
from mimo_jax.lm import backbone
from mimo_jax.nn.params import init_params

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results")
MAX_LOGIT_DIFF = 1e-3
# Noise added to every initial tensor: biases (init 0) and norm gains (init 1) become non-trivial
# and weights grow from std 0.02 to ~0.054, so attention is far from uniform.
PERTURB_STD = 0.05
# Fewer clean calls than this per run and the results are flagged as unreliable.
MIN_CLEAN_CALLS = 3


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--warmup", type=int, default=2, help="untimed rounds after compilation")
  parser.add_argument("--repeats", type=int, default=8, help="timed rounds")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--results-dir", default=RESULTS_DIR)
  return parser.parse_args()


def bench_config() -> MimoAudioConfig:
  """A Qwen2 shape of about 125M parameters (the MiMo audio fields are unused here)."""
  return MimoAudioConfig(
      hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
      head_dim=64, intermediate_size=2048, vocab_size=32000, dtype="float32",
      param_dtype="float32")


def random_params(cfg: MimoAudioConfig, seed: int) -> dict:
  init_key, noise_key = jax.random.split(jax.random.key(seed))
  params = init_params(backbone.param_specs(cfg), init_key, jnp.float32)
  leaves, treedef = jax.tree.flatten(params)
  noisy = [leaf + PERTURB_STD * jax.random.normal(jax.random.fold_in(noise_key, i), leaf.shape)
           for i, leaf in enumerate(leaves)]
  return jax.tree.unflatten(treedef, noisy)


def count_params(params: dict) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(params))


def load_torch_model(params: dict, cfg: MimoAudioConfig) -> torch.nn.Module:
  with tempfile.TemporaryDirectory() as out_dir:
    export_checkpoint(params, cfg, out_dir, dtype="float32")
    model = transformers.Qwen2ForCausalLM.from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation="sdpa")
  return model.eval()


def jax_forward(params: dict, cfg: MimoAudioConfig,
                tokens_bt: jax.Array) -> Callable[[], jax.Array]:
  """Compiles forward for these shapes; returns a call that runs it to completion."""
  fn = jax.jit(lambda p, t: backbone.forward(p, cfg, tokens_bt=t)[0])
  compiled = fn.lower(params, tokens_bt).compile()
  return lambda: compiled(params, tokens_bt).block_until_ready()


def torch_forward(model: torch.nn.Module, tokens_bt: np.ndarray) -> Callable[[], torch.Tensor]:
  input_ids = torch.from_numpy(tokens_bt.astype(np.int64))

  def run():
    with torch.no_grad():
      return model(input_ids=input_ids, use_cache=False).logits
  return run


def check_same_logits(ours: Callable, theirs: Callable) -> dict:
  ours_btv = np.asarray(ours())
  theirs_btv = theirs().numpy()
  diff = float(np.max(np.abs(ours_btv - theirs_btv)))
  scale = float(np.max(np.abs(theirs_btv)))
  print(f"fp32 logits: max |ours - transformers| = {diff:.2e} (max |logit| = {scale:.2f})")
  if not diff <= MAX_LOGIT_DIFF:
    raise SystemExit(f"FAIL: logits differ by {diff:.2e} > {MAX_LOGIT_DIFF:.0e}; the two "
                     "models do not compute the same function, timings would be meaningless")
  return {"max_abs_diff": diff, "max_abs_logit": scale, "tolerance": MAX_LOGIT_DIFF}


def summarise(runs: dict[str, list], tokens: int, cores: int) -> dict[str, dict]:
  """Median and min over the uncontended calls (over all calls if none was uncontended)."""
  out = {}
  for name, name_runs in runs.items():
    clean = [run["s"] for run in name_runs if is_clean(run, cores)]
    times = clean or [run["s"] for run in name_runs]
    out[name] = {"median_s": statistics.median(times), "min_s": min(times),
                 "tokens_per_s": tokens / statistics.median(times), "clean_calls": len(clean),
                 "calls": name_runs}
  return out


def git_commit() -> str:
  """HEAD of the repository this script lives in, marked "+dirty" if mimo_jax has local edits."""
  repo = os.path.dirname(os.path.abspath(__file__))
  git = lambda *a: subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True).stdout
  dirty = git("status", "--porcelain", "--", ":/mimo_jax").strip()
  return git("rev-parse", "HEAD").strip() + ("+dirty" if dirty else "")


def versions() -> dict:
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib"),
          "torch": torch.__version__, "transformers": transformers.__version__,
          "numpy": np.__version__, "jax_backend": jax.default_backend()}


def markdown(report: dict) -> str:
  r, m, v, c = report["results"], report["machine"], report["versions"], report["config"]
  check = report["logit_check"]
  lines = [
      "# Backbone forward throughput on CPU: mimo_jax vs transformers",
      "",
      f"CPU only (no accelerator): {m['cpu_model']} ({m['cpu_family_model']}), "
      f"{m['cores']} cores, {'KVM guest' if m['hypervisor'] else 'bare metal'}; "
      f"SIMD: {' '.join(m['simd_flags'])}. Run {report['date']}.",
      "",
      f"Qwen2 shape, {report['param_count']:,} parameters (hidden {c['hidden_size']}, "
      f"{c['num_hidden_layers']} layers, {c['num_attention_heads']} heads / "
      f"{c['num_key_value_heads']} KV heads, head_dim {c['head_dim']}, FFN "
      f"{c['intermediate_size']}, vocab {c['vocab_size']}). Batch {report['batch']} x "
      f"{report['seq']} tokens, full-sequence forward to logits, no KV cache. "
      f"{report['warmup']} warm-up + {report['repeats']} timed interleaved rounds.",
      "",
      "| run | median s/forward | min s | tokens/s (median) | clean calls |",
      "|---|---:|---:|---:|---:|",
      *(f"| {name} | {x['median_s']:.3f} | {x['min_s']:.3f} | {x['tokens_per_s']:.0f} | "
        f"{x['clean_calls']}/{len(x['calls'])} |" for name, x in r.items()),
      "",
      f"**Headline (fp32 vs fp32): ours / transformers = {report['ratio_fp32']:.2f}x** "
      "tokens/s (>1: ours faster).",
      f"Ours bf16 / transformers fp32 = {report['ratio_bf16_vs_torch_fp32']:.2f}x.",
      "",
      f"Median and min are over the clean calls: those during which other processes and "
      f"hypervisor steal took at most {CLEAN_SHARE:.0%} of the machine's CPU time (this machine "
      "is shared; the json lists every call with the CPU-seconds others took)."
      + ("" if report["reliable"] else
         f" **Fewer than {MIN_CLEAN_CALLS} clean calls for some run: these numbers are not "
         "reliable.**"),
      "",
      f"Same-computation check (fp32, timed batch): max |logit diff| = "
      f"{check['max_abs_diff']:.2e} (max |logit| {check['max_abs_logit']:.2f}).",
      f"JAX compile time: fp32 {report['compile_s']['ours fp32']:.1f}s, "
      f"bf16 {report['compile_s']['ours bf16']:.1f}s (not in the timings).",
      f"Threads: torch {m['torch_num_threads']} intra-op / {m['torch_num_interop_threads']} "
      f"inter-op; XLA CPU uses its default pool over the {m['cores_usable']} usable cores. "
      f"Env: {m['env']}.",
      f"Versions: jax {v['jax']}, torch {v['torch']}, transformers {v['transformers']}, "
      f"numpy {v['numpy']}, python {v['python']}.",
      "",
      f"Command: `{report['command']}` at commit {report['git_commit']}.",
      "",
  ]
  return "\n".join(lines)


def build_calls(cfg: MimoAudioConfig, params: dict, model: torch.nn.Module,
                tokens_bt: np.ndarray) -> tuple[dict[str, Callable], dict[str, float]]:
  """The three forward calls, and the compile seconds of the two jax ones."""
  compile_s, calls = {}, {}
  for name, run_cfg in (("ours fp32", cfg), ("ours bf16", cfg.replace(dtype="bfloat16"))):
    start = time.perf_counter()
    calls[name] = jax_forward(params, run_cfg, jnp.asarray(tokens_bt))
    compile_s[name] = time.perf_counter() - start
  calls["transformers fp32"] = torch_forward(model, tokens_bt)
  return calls, compile_s


def print_table(results: dict[str, dict]) -> None:
  print(f"\n{'run':<20} {'median s':>9} {'min s':>8} {'tokens/s':>9} {'clean':>6}")
  for name, x in results.items():
    print(f"{name:<20} {x['median_s']:>9.3f} {x['min_s']:>8.3f} {x['tokens_per_s']:>9.0f} "
          f"{x['clean_calls']:>3}/{len(x['calls'])}")


def main() -> None:
  args = parse_args()
  cfg = bench_config()
  params = random_params(cfg, args.seed)
  n_params = count_params(params)
  print(f"parameters: {n_params:,}")
  model = load_torch_model(params, cfg)
  torch_params = sum(p.numel() for p in model.parameters())
  if torch_params != n_params:
    raise SystemExit(f"FAIL: transformers model has {torch_params:,} parameters, ours {n_params:,}")

  tokens_bt = np.random.default_rng(args.seed).integers(
      0, cfg.vocab_size, (args.batch, args.seq), dtype=np.int32)
  calls, compile_s = build_calls(cfg, params, model, tokens_bt)
  logit_check = check_same_logits(calls["ours fp32"], calls["transformers fp32"])
  cores = len(os.sched_getaffinity(0))
  runs = time_interleaved(calls, args.warmup, args.repeats, cores)
  results = summarise(runs, args.batch * args.seq, cores)
  reliable = all(x["clean_calls"] >= MIN_CLEAN_CALLS for x in results.values())
  torch_tps = results["transformers fp32"]["tokens_per_s"]
  report = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": shlex.join(["python", *sys.argv]), "git_commit": git_commit(),
      "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                 if k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
                          "rope_theta", "rms_norm_eps", "param_dtype")},
      "param_count": n_params, "batch": args.batch, "seq": args.seq, "warmup": args.warmup,
      "repeats": args.repeats, "seed": args.seed, "perturb_std": PERTURB_STD,
      "clean_share": CLEAN_SHARE, "reliable": reliable, "logit_check": logit_check,
      "compile_s": compile_s, "results": results,
      "ratio_fp32": results["ours fp32"]["tokens_per_s"] / torch_tps,
      "ratio_bf16_vs_torch_fp32": results["ours bf16"]["tokens_per_s"] / torch_tps,
      "machine": machine_info(
          torch_num_threads=torch.get_num_threads(),
          torch_num_interop_threads=torch.get_num_interop_threads()), "versions": versions(),
  }
  print_table(results)
  print(f"ours / transformers (fp32 vs fp32): {report['ratio_fp32']:.2f}x; ours bf16 / "
        f"transformers fp32: {report['ratio_bf16_vs_torch_fp32']:.2f}x")
  if not reliable:
    print(f"WARNING: fewer than {MIN_CLEAN_CALLS} uncontended calls for some run; the machine "
          "was busy with other work, rerun when it is quiet")
  write_results(report, markdown(report), args.results_dir, "backbone_cpu")


if __name__ == "__main__":
  main()
