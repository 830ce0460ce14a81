"""One process of the two-process sharding test (run by tests/test_multiprocess.py).

argv: coordinator address, number of processes, this process's id. Each process owns two fake
CPU devices; together they form one 2x2 (fsdp x tensor) mesh.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

address, n_processes, process_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
jax.distributed.initialize(coordinator_address=address, num_processes=n_processes,
                           process_id=process_id)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from mimo_jax import config, sharding  # noqa: E402
from mimo_jax.lm import backbone  # noqa: E402
from mimo_jax.nn.params import logical_axes  # noqa: E402
from tests.helpers import random_params  # noqa: E402


def main():
  assert jax.process_count() == n_processes and jax.device_count() == 2 * n_processes
  cfg = config.tiny()
  specs = backbone.param_specs(cfg)
  params = random_params(specs)  # every process draws the same values from the same seed
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (4, 10))
  local_device = jax.local_devices()[0]
  expected, _ = jax.jit(lambda p, t: backbone.forward(p, cfg, tokens_bt=t), device=local_device)(
      params, tokens)

  mesh = sharding.make_mesh("data:1,fsdp:-1,tensor:2")
  sharded = sharding.shard_params(params, logical_axes(specs), mesh)
  batch = sharding.shard_params(tokens, ("batch", "length"), mesh)
  with jax.set_mesh(mesh):
    logits, _ = jax.jit(lambda p, t: backbone.forward(p, cfg, tokens_bt=t))(sharded, batch)
  gathered = multihost_utils.process_allgather(logits, tiled=True)
  np.testing.assert_allclose(gathered, np.asarray(expected), atol=1e-5, rtol=0)
  print(f"process {process_id}: sharded forward over {jax.device_count()} devices matches",
        flush=True)


if __name__ == "__main__":
  main()
