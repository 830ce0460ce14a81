"""The flags that make a training command one process of several, and what they start.

  --multihost            jax.distributed.initialize() with no arguments (TPU pods, clusters JAX
                         detects)
  --coordinator_address, --num_processes, --process_id
                         explicit jax.distributed settings (e.g. processes on one machine)

Imports no JAX at module level: `initialize` must run before any other JAX call.
"""

from absl import app, flags


def define_flags() -> None:
  flags.DEFINE_bool("multihost", False, "jax.distributed.initialize() with no arguments (TPU "
                    "pods and clusters JAX detects).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Processes in the job.")
  flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize() -> None:
  """jax.distributed.initialize() as the flags ask; nothing without them."""
  import jax  # noqa: PLC0415
  f = flags.FLAGS
  explicit = (f.coordinator_address, f.num_processes, f.process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes, process_id=f.process_id)
  elif f.multihost:
    jax.distributed.initialize()
