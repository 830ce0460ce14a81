"""Peak host memory of exporting and importing checkpoints (issue 19): streaming keeps each
direction within about one tensor of the params themselves.

  python experiments/bench/export_memory.py                  # every case, results recorded
  python experiments/bench/export_memory.py --case=lm_test   # one case, its JSON on stdout

Each case runs in a fresh process (its own peak): random params are built on one CPU device
(which lives in host memory, so RSS counts them), then

  export   the params -> an official folder (float32), streamed by `convert.hf` /
           `codec.checkpoint`; reported: peak RSS during the export minus RSS before it
  import   the folder -> params again (the params freed first), built in place by
           `convert.names.from_official`; reported: peak RSS minus RSS before, minus the params
  orbax    (LM cases) the imported params saved as an Orbax item, as `python -m mimo_jax.convert`
           does for an official folder; reported: peak RSS minus RSS before

Peaks come from /proc/self/status VmHWM, reset before each phase via /proc/self/clear_refs.

Cases: lm_1b (experiments/configs/small_1b.py, 1.0B parameters, 4.0 GB in float32), codec_full
(the released tokenizer's shape, 1.2B, 5.2 GB), lm_test (a 450 MB LM, the size the test in
tests/convert/test_export_memory.py runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import machine_info, write_results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = ("lm_1b", "codec_full", "lm_test")
RESULTS_DIR = os.path.join(ROOT, "experiments", "results")
MB = 2**20


def _status(field: str) -> int:
  with open("/proc/self/status") as f:
    return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def _reset_peak() -> int:
  """Resets VmHWM to the current RSS; returns that RSS."""
  gc.collect()
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  return _status("VmRSS")


def _model(case: str):
  """(kind, config, specs) of a case."""
  from mimo_jax import config as model_config  # noqa: PLC0415
  from mimo_jax.codec import checkpoint as codec_checkpoint  # noqa: PLC0415
  from mimo_jax.codec import config as codec_config  # noqa: PLC0415
  from mimo_jax.lm import model  # noqa: PLC0415
  from mimo_jax.train import config as train_config  # noqa: PLC0415
  if case == "codec_full":
    cfg = codec_config.full()
    return "codec", cfg, codec_checkpoint.codec_specs(cfg)
  if case == "lm_1b":
    cfg = train_config.model_from(train_config.load_file(
        os.path.join(ROOT, "experiments", "configs", "small_1b.py")))
  else:
    cfg = model_config.tiny(vocab_size=4096, hidden_size=768, intermediate_size=3072,
                            num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                            head_dim=64)
  return "lm", cfg, model.param_specs(cfg)


def measure(case: str, out_dir: str) -> dict:
  """One case in this process: the numbers described in the module doc, in bytes."""
  from mimo_jax import sharding  # noqa: PLC0415
  from mimo_jax.codec import checkpoint as codec_checkpoint  # noqa: PLC0415
  from mimo_jax.convert import hf  # noqa: PLC0415
  from mimo_jax.convert.names import official_shapes  # noqa: PLC0415
  from mimo_jax.lm import model  # noqa: PLC0415
  from mimo_jax.train.checkpoint import Checkpointer  # noqa: PLC0415
  kind, cfg, specs = _model(case)
  mesh = sharding.make_mesh("data:1,fsdp:1,tensor:1", devices=jax.devices()[:1])
  shapes = (codec_checkpoint.official_shapes(cfg) if kind == "codec" else official_shapes(specs))
  model_bytes = sum(math.prod(s) for s in shapes.values()) * 4
  largest = max(math.prod(s) for s in shapes.values()) * 4
  report = {"case": case, "params": model_bytes // 4, "model_bytes": model_bytes,
            "largest_tensor_bytes": largest, "load_before": os.getloadavg()}

  params = jax.block_until_ready(sharding.init_sharded(specs, jax.random.key(0), mesh))
  folder = os.path.join(out_dir, case)
  started, rss = time.perf_counter(), _reset_peak()
  if kind == "codec":
    codec_checkpoint.export_codec(params, cfg, folder)
  else:
    hf.export_checkpoint(params, cfg, folder)
  report["export"] = {"rss_before": rss, "peak": _status("VmHWM"),
                      "s": time.perf_counter() - started}
  del params

  started, rss = time.perf_counter(), _reset_peak()
  if kind == "codec":
    params, _ = codec_checkpoint.import_codec(folder)
  else:
    params, _ = hf.import_checkpoint(folder, cfg, specs_fn=model.param_specs, mesh=mesh)
  jax.block_until_ready(params)
  report["import"] = {"rss_before": rss, "peak": _status("VmHWM"),
                      "s": time.perf_counter() - started}

  if kind == "lm":
    started, rss = time.perf_counter(), _reset_peak()
    with Checkpointer(os.path.join(out_dir, f"{case}_run"), async_save=False) as ckpt:
      ckpt.save(0, {"params": params}, force=True)
    report["orbax"] = {"rss_before": rss, "peak": _status("VmHWM"),
                       "s": time.perf_counter() - started}
  for phase in ("export", "import", "orbax"):
    if phase in report:
      r = report[phase]
      r["extra"] = r["peak"] - r["rss_before"] - (model_bytes if phase == "import" else 0)
  report["load_after"] = os.getloadavg()
  return report


def _markdown(reports: list[dict], machine: dict) -> str:
  lines = [
      "# Export / import peak memory (experiments/bench/export_memory.py)", "",
      f"Machine: {machine['cpu_model']}, {machine['cores']} cores, "
      f"{machine['memory_gib']:.0f} GiB, shared with other work (load averages per case "
      "below). Params on one CPU device (host memory). `extra`: peak RSS minus RSS before the "
      "phase (import: minus the params too). MB = 2^20 bytes.", "",
      "| case | params | model MB | largest tensor MB | export extra MB | import extra MB "
      "| Orbax save extra MB | export s | import s | load (1-min avg) before / after |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for r in reports:
    orbax = f"{r['orbax']['extra'] / MB:.0f}" if "orbax" in r else "-"
    lines.append(
        f"| {r['case']} | {r['params'] / 1e9:.3f}B | {r['model_bytes'] / MB:.0f} | "
        f"{r['largest_tensor_bytes'] / MB:.0f} | {r['export']['extra'] / MB:.0f} | "
        f"{r['import']['extra'] / MB:.0f} | {orbax} | {r['export']['s']:.0f} | "
        f"{r['import']['s']:.0f} | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")
  lines += [
      "", "Notes:",
      "- export extra includes a one-time cost of ~70 MB for JAX's first compilation of the "
      "per-tensor reads (a second export in the same process measured 36 MB for lm_test); the "
      "cast-and-write buffer is 16 MB.",
      "- codec import extra: our quantizer tree pads every codebook to 1024 rows (the official "
      "tensors have 128 for stages 2-19), so the params we build are larger than `model MB`; "
      "the stacking of the padded books is the rest.",
      "- Orbax save extra: Orbax copies device arrays to host buffers before writing; on a CPU "
      "host that is a second copy of the params, on an accelerator host the params are in "
      "device memory and the copy is the only host copy. `save_concurrent_gb=1` did not lower "
      "it (tried on 400 MB)."]
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", choices=CASES, help="run one case here, print its JSON")
  parser.add_argument("--out", help="folder for the exported files (default: a temp folder)")
  args = parser.parse_args()
  if args.case:
    with tempfile.TemporaryDirectory(dir=args.out) as out_dir:
      print(json.dumps(measure(args.case, out_dir)))
    return
  reports = []
  for case in CASES:
    print(f"case {case} ...", flush=True)
    done = subprocess.run([sys.executable, __file__, f"--case={case}"] +
                          ([f"--out={args.out}"] if args.out else []),
                          capture_output=True, text=True, check=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
    reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps(reports[-1]))
  machine = machine_info()
  write_results({"machine": machine, "cases": reports}, _markdown(reports, machine),
                RESULTS_DIR, "export_memory")


if __name__ == "__main__":
  main()
