"""Train the audio tokenizer (codec):
`python -m mimo_jax.train_codec --config=experiments/configs/codec_tiny.py --workdir=DIR`.

  --config      an experiment file (`get_config()`); fields override as --config.steps=100,
                --config.stage=2, --config.data.manifest=corpus/manifest.jsonl ...
  --workdir     run folder; one that already holds a checkpoint is resumed from its latest
                (also on another --mesh)
  --mesh        overrides config.mesh (e.g. data:1,fsdp:-1,tensor:1)
  --multihost, --coordinator_address, --num_processes, --process_id
                one process of several, as `python -m mimo_jax.train` (mimo_jax.train.multihost)

What is trained and what the workdir holds: `mimo_jax.train.codec`; the loop (resume, SIGTERM,
checkpoints, metrics, the non-finite guard) is the LM trainer's, `mimo_jax.train.loop`.

Exit status: 0 when the run finished or saved a checkpoint on SIGTERM (preemption), 1 when it
stopped on non-finite losses (after a checkpoint), 2 on a bad flag, config or data, 143 when
SIGTERM ended it before it could save (while setting up, or stuck): its latest checkpoint stands.
"""

from absl import app, flags
from ml_collections import config_flags

from mimo_jax.train import multihost


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  config_flags.DEFINE_config_file("config", None, "Codec experiment config file.")
  flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  flags.DEFINE_string("mesh", None, "Mesh axes and sizes; default: the config's mesh.")
  multihost.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.config is None:
    raise app.UsageError("--config: an experiment file is required")
  multihost.initialize()  # before any other JAX call
  from mimo_jax.config import ConfigError  # noqa: PLC0415 (JAX after the flags are checked)
  from mimo_jax.sharding import MeshError  # noqa: PLC0415
  from mimo_jax.train import codec, loop  # noqa: PLC0415
  from mimo_jax.train.checkpoint import CheckpointError, quiet_orbax_logs  # noqa: PLC0415
  quiet_orbax_logs()
  if f.mesh:
    f.config.mesh = f.mesh
  loop.command_result(lambda: codec.train(f.config, f.workdir), f.workdir,
                      (codec.CodecTrainError, ConfigError, MeshError, CheckpointError))


def console() -> None:
  """`python -m mimo_jax.train_codec` and the `mimo-train-codec` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
