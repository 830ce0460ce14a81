"""Exports and imports stream (issue 19): peak RSS beyond the params stays near one tensor, far
below a copy of the model. Measured in a subprocess by the benchmark's own `--case=lm_test`
(a 421 MiB float32 LM whose largest tensor is 12 MiB); the bound is generous, not a timing."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# JAX's first compilation of the per-tensor reads and the write buffers: a fixed cost, measured
# at ~70 MiB + a 16 MiB block on this machine.
CONSTANT = 160 * 2**20


def test_export_and_import_hold_about_one_tensor_beyond_the_params(tmp_path):
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "bench", "export_memory.py"),
       "--case=lm_test", f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
      timeout=1200, env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  bound = report["largest_tensor_bytes"] + CONSTANT
  assert bound < report["model_bytes"] / 2  # a copy of the model would not fit under it
  assert report["export"]["extra"] <= bound, report
  assert report["import"]["extra"] <= bound, report
