"""Plan a step for a TPU topology from any host: compile it, report memory, FLOPs and speed.

  python -m mimo_jax.plan --config=experiments/configs/7b_v5p_64.py --topology=v5p-64 \
      [--phase=generation] [--step=train|generate] [--mesh=...] [--num_slices=2] [--save=PREFIX]

Needs libtpu (`pip install 'jax[tpu]==<jax version>'`), no TPU. Exit status: 0 when the step
fits, 1 when it does not (the report says by how much), 2 on bad flags or a missing libtpu.
"""

from __future__ import annotations

import json
import os
import platform
import sys

from absl import app, flags
from ml_collections import config_flags

from mimo_jax.config import PHASES, ConfigError
from mimo_jax.sharding import MeshError
from mimo_jax.plan import report as report_lib
from mimo_jax.plan import topology as topology_lib

def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file (experiments/configs/<name>.py); "
      "--config.<field>=<value> overrides a field.", lock_config=True)
  flags.DEFINE_string("topology", "v5p-64", "TPU slice: a product name (v5p-64, v5e-256, "
                      "v4-128, v6e-256, ...) or a grid (v5p:2x4x4).")
  flags.DEFINE_integer("num_slices", 1, "Slices joined over the data-centre network (the mesh's "
                       "data axis spans them).")
  flags.DEFINE_string("mesh", None, "Mesh axes per slice (default: the config's mesh).")
  flags.DEFINE_enum("phase", None, list(PHASES), "Override config.train.phase.")
  flags.DEFINE_enum("step", "train", ["train", "generate"], "Which step to compile.")
  flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation assumed for the predicted step time.")
  flags.DEFINE_integer("gen_rows", 64, "--step=generate: sequences decoded together.")
  flags.DEFINE_integer("gen_prompt", 4096, "--step=generate: prompt positions.")
  flags.DEFINE_integer("gen_new", 4096, "--step=generate: new positions (KV cache = prompt + "
                       "new).")
  flags.DEFINE_string("save", None, "Write the report to <SAVE>.json and <SAVE>.md.")


def host() -> str:
  cpu = ""
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                 "")
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (f"{cpu or platform.processor()}, {os.cpu_count()} cores, load average {load:.1f} "
          f"at the end of the compile")


def run(cfg, topology: str, num_slices: int, mesh_flag: str | None, step: str, mfu: float,
        gen_rows: int, gen_prompt: int, gen_new: int) -> dict:
  """Builds and compiles the step; the report dict (also the notebook's entry point)."""
  from mimo_jax.plan import steps  # imports the trainer: after flag checks, for quick --help
  topo = topology_lib.parse_topology(topology, num_slices)
  mesh = topology_lib.topology_mesh(topo, mesh_flag or cfg.mesh)
  if step == "train":
    spec = steps.train_spec(cfg, mesh)
  else:
    spec = steps.generate_spec(cfg, mesh, gen_rows, gen_prompt, gen_new)
  report = report_lib.plan_step(spec, topo, mesh, mfu)
  report["host"] = host()
  return report


def argv_flags() -> list[str]:
  """This run's flags as given (for the saved report), with --save left out."""
  return [a for a in sys.argv[1:] if not a.startswith("--save")]


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  cfg = f.config
  if cfg is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/configs/7b_v5p_64.py")
  if f.phase:
    with cfg.unlocked():
      cfg.train.phase = f.phase
  try:
    report = run(cfg, f.topology, f.num_slices, f.mesh, f.step, f.mfu,
                 f.gen_rows, f.gen_prompt, f.gen_new)
  except (topology_lib.PlanError, ConfigError, MeshError, ValueError) as e:
    print(f"plan: {e}", file=sys.stderr)
    return 2
  report["command"] = "python -m mimo_jax.plan " + " ".join(argv_flags())
  print(report_lib.to_markdown(report))
  if f.save:
    for path in report_lib.save(report, f.save):
      print(f"wrote {path}")
  else:
    print(json.dumps({"fits": report["fits"], "memory": report["memory"]}, indent=1))
  return 0 if report["fits"] else 1


def console() -> None:
  """`python -m mimo_jax.plan` and the `mimo-plan` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
