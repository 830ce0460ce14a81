"""What a run reports: model FLOPs and MFU, console progress with ETA, TensorBoard, JSONL, PNG.

The logs live in the run's log directory, local or remote (gs://). A remote one is written
through a local copy (appending to an object store is not possible) that is uploaded whenever
`Reporter.flush` is called (at every checkpoint) and at the end.

FLOPs are counted analytically from the config (the matmuls and attention of the three stacks,
the heads and projections; forward x 3 for a train step, recomputation under remat not counted,
as MFU conventionally excludes it). Peak FLOP/s per chip are dense bf16 figures from the vendors'
data sheets.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"


# Dense bf16 peak FLOP/s per chip (vendor data sheets). Keys match jax's device_kind, lower-case.
PEAK_FLOPS = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
    "nvidia h200": 989e12,
    "nvidia h100": 989e12,
    "nvidia a100": 312e12,
}


def peak_flops(chip: str = "") -> float | None:
  """Peak FLOP/s of one chip: `chip` if given, else the first device's kind; None if unknown."""
  kind = (chip or jax.devices()[0].device_kind).lower()
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):  # most specific first
    if kind.startswith(name):
      return PEAK_FLOPS[name]
  return None


def _summary_writer(log_dir: str):
  """A tensorboardX SummaryWriter, imported without torch. tensorboardX imports torch whenever it
  is installed (the judges' extra installs it), only to accept torch tensors: ~3 s at every
  start of a training process here, for nothing, since a run logs floats. So unless this process
  has already imported torch, `import torch` fails for the moment of that import (a None entry
  in sys.modules raises ImportError, which tensorboardX catches)."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter(log_dir)


class Reporter:
  """Per-step records to `<log_dir>/metrics.jsonl` (every step), console and TensorBoard (every
  `every` steps); `flush` redraws `loss_curve.png` and uploads a remote log dir.

  Only process 0 writes; every process may call it. Rows that are `due` may carry the examples
  the data pipeline skipped so far, as `skipped/<reason>` counts. An existing metrics.jsonl (a
  resumed run's, already truncated to its checkpoint) is continued.
  """

  def __init__(self, log_dir: str, *, tensorboard: bool, total_steps: int, every: int,
               start_step: int, summary: Callable[[dict[str, float]], str],
               curves: Sequence[str], tokens_per_step: int | None = None,
               flops_per_step: float | None = None, peak: float | None = None,
               n_chips: int = 1):
    self.enabled = jax.process_index() == 0
    self.total_steps, self.every = total_steps, every
    self.summary, self.curves = summary, tuple(curves)
    self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
    self.peak, self.n_chips = peak, n_chips
    self.log_dir = epath.Path(log_dir)
    self._remote = "://" in str(log_dir)
    self._local = pathlib.Path(log_dir)
    self._writer = None
    if not self.enabled:
      return
    if self._remote:
      self._local = pathlib.Path(tempfile.mkdtemp(prefix="mimo_jax_logs_"))
      if (self.log_dir / METRICS_FILE).exists():
        (self._local / METRICS_FILE).write_bytes((self.log_dir / METRICS_FILE).read_bytes())
    self._local.mkdir(parents=True, exist_ok=True)
    self.jsonl_path = str(self._local / METRICS_FILE)
    if tensorboard:
      self._writer = _summary_writer(str(self._local / TENSORBOARD_DIR))
    self._start_step, self._start_time = start_step, time.perf_counter()
    self._last_time = self._start_time

  def due(self, step: int) -> bool:
    """Whether the row of `step` goes to the console and TensorBoard."""
    return step % self.every == 0 or step == self.total_steps

  def record(self, step: int, metrics: dict[str, Any], step_time: float,
             skipped: dict[str, int] | None = None) -> dict[str, float]:
    """Logs the metrics of the step that ended at `step` (1-based count of steps done) and, if
    given, the examples skipped so far per reason."""
    row = flatten(metrics)
    row.update({f"skipped/{reason}": count for reason, count in (skipped or {}).items()})
    row["step"] = step
    row["step_time_s"] = step_time
    if self.tokens_per_step:
      row["tokens_per_s"] = self.tokens_per_step / step_time if step_time > 0 else math.nan
    if self.peak and self.flops_per_step:
      row["mfu"] = self.flops_per_step / step_time / (self.peak * self.n_chips)
    if not self.enabled:
      return row
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.due(step):
      self._console(step, row)
      if self._writer is not None:
        for k, v in row.items():
          if k != "step":
            self._writer.add_scalar(k, v, step)
        self._writer.flush()
    return row

  def _console(self, step: int, row: dict[str, float]) -> None:
    done = step - self._start_step
    elapsed = time.perf_counter() - self._start_time
    eta = elapsed / max(done, 1) * (self.total_steps - step)
    speed = f"{row['step_time_s']:.2f}s/step"
    if "tokens_per_s" in row:
      speed += f" {row['tokens_per_s']:.0f} tok/s"
    if "mfu" in row:
      speed += f" mfu {row['mfu']:.1%}"
    skips = {k[len("skipped/"):]: int(v) for k, v in row.items() if k.startswith("skipped/")}
    skipped = (f" | skipped {sum(skips.values())} (" +
               ", ".join(f"{k} {v}" for k, v in sorted(skips.items(), key=lambda kv: -kv[1])) +
               ")") if skips else ""
    logging.info("step %d/%d (%.0f%%) %s | %s | ETA %s%s", step, self.total_steps,
                 100 * step / self.total_steps, self.summary(row), speed, _duration(eta),
                 skipped)

  def flush(self) -> None:
    """Redraws the loss curve; uploads the logs of a remote log dir."""
    if not self.enabled:
      return
    if self._writer is not None:
      self._writer.flush()
    if (self._local / METRICS_FILE).exists():
      plot_losses(str(self._local / METRICS_FILE), str(self._local / PLOT_FILE), self.curves)
    if self._remote:
      for path in self._local.rglob("*"):
        if path.is_file():
          target = self.log_dir / str(path.relative_to(self._local))
          target.parent.mkdir(parents=True, exist_ok=True)
          target.write_bytes(path.read_bytes())

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
    self.flush()


# The speech LM's curves and console summary.
LM_CURVES = ("loss", "text_loss") + tuple(f"audio_loss_c{i}" for i in range(8))


def lm_summary(row: dict[str, float]) -> str:
  audio = "".join(f" c{i} {row[f'audio_loss_c{i}']:.3f}" for i in range(8)
                  if f"audio_loss_c{i}" in row)
  lrs = " ".join(f"{k[3:]} {v:.2e}" for k, v in row.items() if k.startswith("lr_"))
  return (f"loss {row['loss']:.4f} text {row['text_loss']:.4f} acc {row['text_acc']:.3f}{audio} "
          f"| grad {row['grad_norm']:.3f} | lr {lrs}")


def flatten(metrics: dict[str, Any]) -> dict[str, float]:
  """A step's metrics as log scalars: scalars as they are, a per-stage [q] array (the codec's
  RVQ statistics) as name/q0, name/q1, ..."""
  row = {}
  for name, value in metrics.items():
    value = np.asarray(value)
    if value.ndim == 0:
      row[name] = float(value)
    else:
      row.update({f"{name}/q{i}": float(v) for i, v in enumerate(value)})
  return row


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def sum_counts(counts: dict[str, int]) -> dict[str, int]:
  """Per-key sums of every process's counts (each process may have other keys); every process
  must call it at the same point."""
  if jax.process_count() == 1:
    return dict(counts)
  encoded = np.frombuffer(json.dumps(counts).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.array(len(encoded), np.int32))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:len(encoded)] = encoded
  total: dict[str, int] = {}
  for size, row in zip(sizes, multihost_utils.process_allgather(padded)):
    for key, value in json.loads(bytes(row[:size]).decode()).items():
      total[key] = total.get(key, 0) + value
  return dict(sorted(total.items()))


def read_jsonl(path: str) -> list[dict[str, float]]:
  """The rows of a JSONL log (local or remote path)."""
  lines = epath.Path(path).read_text().splitlines()
  return [json.loads(line) for line in lines if line.strip()]


def truncate_jsonl(path: str, last_step: int) -> None:
  """Drops log rows past the checkpoint a run resumes from (steps it will redo)."""
  if jax.process_index() != 0 or not epath.Path(path).exists():
    return
  rows = [r for r in read_jsonl(path) if r["step"] <= last_step]
  epath.Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def plot_losses(jsonl_path: str, png_path: str, curves: Sequence[str]) -> None:
  """The `curves` of a run's JSONL log (those its rows have), the first drawn thicker."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  rows = read_jsonl(jsonl_path)
  if not rows:
    return
  steps = [r["step"] for r in rows]
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for key in curves:
    if key in rows[-1]:
      ax.plot(steps, [r.get(key, math.nan) for r in rows], label=key,
              linewidth=2 if key == curves[0] else 1)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
