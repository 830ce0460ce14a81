"""Evaluation reports: a Markdown + JSON table per checkpoint, a side-by-side table for several,
and histograms of the per-item scores as PNG."""

from __future__ import annotations

import json
import math
import os

import numpy as np

# Per-item columns worth a histogram: (row key, axis label).
HISTOGRAMS = (("error_rate", "WER / CER"), ("open_wer", "judge WER (open vocabulary)"),
              ("closed_wer", "judge WER (closed set)"), ("sim", "speaker similarity"),
              ("duration_ratio", "generated / reference seconds"))


def _cell(value) -> str:
  if value is None:  # a figure nothing was scored for
    return ""
  if isinstance(value, float):
    return "nan" if math.isnan(value) else f"{value:.4g}"
  return str(value)


def _leaves(prefix: str, value) -> dict[str, object]:
  if not isinstance(value, dict):
    return {prefix: value}
  return {k: v for key, sub in value.items() for k, v in _leaves(f"{prefix}.{key}", sub).items()}


def flatten(summary: dict) -> dict[str, object]:
  """{"task.metric[.part]": value} of a checkpoint's summary ("tts.open_wer.macro")."""
  return {k: v for task, figures in summary["tasks"].items()
          for k, v in _leaves(task, figures).items()}


def write_checkpoint(folder: str, summary: dict) -> None:
  """summary.json and report.md of one checkpoint's run."""
  with open(os.path.join(folder, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, ensure_ascii=False)
  sizes = summary["settings"].get("closed_set_sizes", {})
  closed = (", closed set (`closed_*`: " + ", ".join(f"{t} {n} sentences" for t, n in
                                                     sizes.items()) + ")") if sizes else ""
  lines = [f"# Evaluation of {summary['ckpt']}", "",
           f"Judges: pocketsphinx open vocabulary (`open_*`){closed}, resemblyzer SIM, DNSMOS. "
           "`ref_*`: the same judge on the reference audio. `.macro`: mean of per-utterance "
           "rates; `.corpus`: all errors over all reference words; `.n`: items scored. Keys: "
           "`mimo_jax.eval.tasks.summarize`.", "",
           "Settings: " + ", ".join(f"{k}={v}" for k, v in summary["settings"].items()
                                    if k != "closed_set_sizes"), "",
           "| task | metric | value |", "|---|---|---|"]
  for name, value in flatten(summary).items():
    task, metric = name.split(".", 1)
    lines.append(f"| {task} | {metric} | {_cell(value)} |")
  skipped = {t: s for t, s in summary["skipped"].items() if s["counts"]}
  if skipped:
    lines += ["", "## Skipped items", "", "| task | reason | count |", "|---|---|---|"]
    lines += [f"| {task} | {reason} | {count} |" for task, s in skipped.items()
              for reason, count in s["counts"].items()]
  with open(os.path.join(folder, "report.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def write_side_by_side(path_stem: str, summaries: list[dict]) -> None:
  """<stem>.md and <stem>.json: one column per checkpoint, one row per task metric."""
  flat = [flatten(s) for s in summaries]
  names = list(dict.fromkeys(k for f in flat for k in f))
  table = {name: {s["ckpt"]: f.get(name) for s, f in zip(summaries, flat)} for name in names}
  with open(path_stem + ".json", "w", encoding="utf-8") as f:
    json.dump(table, f, indent=1, ensure_ascii=False)
  lines = ["| metric | " + " | ".join(s["ckpt"] for s in summaries) + " |",
           "|---|" + "---|" * len(summaries)]
  lines += [f"| {name} | " + " | ".join(_cell(v) for v in row.values())
            + " |" for name, row in table.items()]
  with open(path_stem + ".md", "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def write_histograms(folder: str, task: str, rows: list[dict]) -> list[str]:
  """One PNG per per-item score column the task's rows have; returns the paths."""
  import matplotlib  # noqa: PLC0415 (only when a report is drawn)
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # noqa: PLC0415
  written = []
  for key, label in HISTOGRAMS:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and
              math.isfinite(r[key])]
    if not values:
      continue
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=min(30, max(5, len(values))), color="tab:blue")
    ax.set_xlabel(label)
    ax.set_ylabel("items")
    ax.set_title(f"{task}: {label} (n={len(values)}, mean {np.mean(values):.3f})")
    fig.tight_layout()
    path = os.path.join(folder, f"hist_{key}.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(path)
  return written
