"""One process of test_pipeline's two-process run: global batches from make_train_iterator.

argv: coordinator address, number of processes, this process's id, shard folder, tokenizer
folder, output .npz. Each process owns two fake CPU devices; the mesh spans all of them. The
process writes the first global batches, gathered whole, for the test to compare. Importing this
module only defines the run's settings (the test reads them); `main` does the rest.
"""

import os
import sys

import numpy as np

# The run's settings, shared with the test's single-process expectation.
SEQ_POSITIONS, GLOBAL_BATCH, SEED, PHASE, WINDOW, N_BATCHES = 96, 4, 7, "generation", 2, 2


def main(argv):
  address, n_processes, process_id = argv[0], int(argv[1]), int(argv[2])
  shards_dir, tokenizer_dir, out_path = argv[3:6]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"  # before JAX starts
  import jax  # pylint: disable=import-outside-toplevel
  jax.distributed.initialize(coordinator_address=address, num_processes=n_processes,
                             process_id=process_id)
  # pylint: disable=import-outside-toplevel
  from absl import flags
  from jax.experimental import multihost_utils

  from mimo_jax import config, sharding
  from mimo_jax.data import pipeline, pretokenize, templates
  from mimo_jax.data.tokenizer import TextTokenizer
  # pylint: enable=import-outside-toplevel
  flags.FLAGS.mark_as_parsed()
  assert jax.process_count() == n_processes and jax.device_count() == 2 * n_processes
  fmt = templates.Formatter.from_config(config.preset("tiny"), TextTokenizer.load(tokenizer_dir))
  mesh = sharding.make_mesh("data:1,fsdp:-1,tensor:1")
  it = pipeline.make_train_iterator(pretokenize.shard_paths(shards_dir), fmt, PHASE,
                                    SEQ_POSITIONS, GLOBAL_BATCH, SEED, mesh,
                                    pack_window_sequences=WINDOW)
  out = {}
  for j in range(N_BATCHES):
    for key, value in next(it).items():
      assert value.shape[0] == GLOBAL_BATCH
      out[f"{j}/{key}"] = np.asarray(multihost_utils.process_allgather(value, tiled=True))
  np.savez(out_path, **out)
  print(f"process {process_id}: wrote {len(out)} arrays")


if __name__ == "__main__":
  main(sys.argv[1:])
