"""What the CPU benchmark scripts share: timing on a shared machine, machine facts, result files.

This machine is shared with other work, so every timed call also records the CPU-seconds other
processes and the hypervisor took meanwhile; a call is "clean" when that stayed under CLEAN_SHARE
of the machine, and the scripts take medians over clean calls.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from typing import Callable

# A call is "clean" if other processes and steal took at most this share of the machine's CPU.
CLEAN_SHARE = 0.05


def cpu_seconds() -> dict[str, float]:
  """Machine-wide busy and steal CPU-seconds (/proc/stat), this process's own, and wall time."""
  with open("/proc/stat") as f:
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
  hz = os.sysconf("SC_CLK_TCK")
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return {"busy": (user + nice + system + irq + softirq) / hz, "steal": steal / hz,
          "own": usage.ru_utime + usage.ru_stime, "wall": time.perf_counter()}


def load_since(before: dict[str, float]) -> dict[str, float]:
  """Wall seconds since `before`, our CPU-seconds, and those of other processes plus steal."""
  after = cpu_seconds()
  delta = {k: after[k] - before[k] for k in before}
  return {"s": delta["wall"], "own_cpu_s": delta["own"],
          "others_cpu_s": max(0.0, delta["busy"] - delta["own"]) + delta["steal"]}


def timed_call(call: Callable) -> dict:
  """The load of one call; a call may return a dict of extra fields to record with it."""
  before = cpu_seconds()
  extra = call()
  return {**load_since(before), **(extra if isinstance(extra, dict) else {})}


def is_clean(call: dict[str, float], cores: int) -> bool:
  return call["others_cpu_s"] <= CLEAN_SHARE * call["s"] * cores


def median_over_clean(calls: list[dict], cores: int) -> tuple[float, int]:
  """Median seconds of the clean calls (of every call if none was clean) and how many were."""
  clean = [c["s"] for c in calls if is_clean(c, cores)]
  return statistics.median(clean or [c["s"] for c in calls]), len(clean)


def time_interleaved(calls: dict[str, Callable], warmup: int, repeats: int,
                     cores: int) -> dict[str, list]:
  """Timed calls of every entry, one call of each per round, in the same order every round, so
  the entries share the same minutes of machine time."""
  timed: dict[str, list] = {name: [] for name in calls}
  for round_ in range(warmup + repeats):
    this_round = {name: timed_call(call) for name, call in calls.items()}
    if round_ >= warmup:
      for name, record in this_round.items():
        timed[name].append(record)
    notes = [f"{name} {r['s']:.3f}s" + ("" if is_clean(r, cores) else
                                        f" (others took {r['others_cpu_s']:.1f} CPU-s)")
             for name, r in this_round.items()]
    print(f"  round {round_ + 1}/{warmup + repeats}" + (" (warm-up)" if round_ < warmup else "")
          + ": " + ", ".join(notes))
  return timed


def machine_info(**extra) -> dict:
  """CPU model, SIMD flags, cores, memory and thread-related environment of this machine."""
  with open("/proc/cpuinfo") as f:
    fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                  if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  flags = fields.get("flags", "").split()
  return {
      "cpu_model": fields.get("model name"),
      "cpu_family_model": f"family {fields.get('cpu family')} model {fields.get('model')}",
      "hypervisor": "hypervisor" in flags,
      "simd_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
      "cores": os.cpu_count(),
      "cores_usable": len(os.sched_getaffinity(0)),
      "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
      "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")},
      "platform": platform.platform(),
      **extra,
  }


def write_results(report: dict, markdown: str, results_dir: str, name: str) -> None:
  """Writes <name>.json (every number) and <name>.md (the readable report) into results_dir."""
  os.makedirs(results_dir, exist_ok=True)
  with open(os.path.join(results_dir, f"{name}.json"), "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
  with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
    f.write(markdown)
  print(f"wrote {os.path.normpath(results_dir)}/{name}.{{json,md}}")
