"""Train the speech LM: `python -m mimo_jax.train --config=experiments/configs/tiny.py --workdir=DIR`.

  --config               an experiment file (`get_config()`); fields override as
                         --config.train.phase=generation --config.train.steps=100 ...
  --workdir              local folder or gs:// path; a workdir with a checkpoint is resumed
  --mesh                 overrides config.mesh, e.g. data:1,fsdp:-1,tensor:1
  --export_dir           when the run finishes, write an official MiMo-Audio folder there
                         (LoRA adapters merged; the same code as `python -m mimo_jax.convert`):
                         config.json, safetensors, the text tokenizer's files
  --export_dtype         float32 (default) or bfloat16
  --export_tokenizer     the text tokenizer to put there (default: config.data.tokenizer, else
                         the MiMo tokenizer); checked against the model before training starts
  --export_codec         an official audio tokenizer folder to write into export_dir/audio_tokenizer
  --force_resume         resume even if the config changes the model, the data stream or the
                         optimizer state layout (refused by default; see train/run_json.py)
  --init_from            params to start from: another run's workdir or checkpoint folder
                         (phase 2 from phase 1; the optimizer starts fresh), or an official
                         MiMo-Audio safetensors folder (its config.json is the model)
  --multihost            call jax.distributed.initialize() (TPU pods, clusters JAX detects)
  --coordinator_address, --num_processes, --process_id
                         explicit jax.distributed settings (e.g. processes on one machine)

Exit status: 0 when the run finished or saved a checkpoint on SIGTERM (preemption), 1 when it
stopped on non-finite losses (after a checkpoint), 2 on a bad flag, config, checkpoint or data
that skips too much to train on, 143 when SIGTERM ended it before it could save (while setting
up, or stuck; see mimo_jax/train/preemption.py): its latest checkpoint stands.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from mimo_jax.train import multihost


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (local or gs://).")
  flags.DEFINE_string("mesh", None, "Mesh axes and sizes; default: the config's mesh.")
  flags.DEFINE_string("init_from", None, "Params to start from (see module doc).")
  flags.DEFINE_string("export_dir", None, "When the run finishes, write its params here as an "
                      "official MiMo-Audio checkpoint (LoRA merged).")
  flags.DEFINE_enum("export_dtype", "float32", ["float32", "bfloat16"],
                    "dtype of the exported safetensors.")
  flags.DEFINE_string("export_tokenizer", None, "Text tokenizer for the export (tokenizer.json "
                      "or HF folder; default: the run's).")
  flags.DEFINE_string("export_codec", None, "Official audio tokenizer folder to write into "
                      "export_dir/audio_tokenizer.")
  flags.DEFINE_bool("force_resume", False, "Resume even when the config changes the model, the "
                    "data stream or the optimizer state layout.")
  multihost.define_flags()
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mimo_jax.train.checkpoint import quiet_orbax_logs
  quiet_orbax_logs()
  f = flags.FLAGS
  config_file = config_flags.get_config_filename(f["config"])
  if not os.path.isfile(config_file):
    print(f"error: --config={config_file}: no such file", file=sys.stderr)
    sys.exit(2)
  multihost.initialize()  # before any other JAX call
  from mimo_jax.codec.config import load_codec_config
  from mimo_jax.config import ConfigError
  from mimo_jax.convert.hf import tokenizer_writer
  from mimo_jax.convert.safetensors_io import CheckpointPathError
  from mimo_jax.data.tokenizer import TokenizerError
  from mimo_jax.data.packing import SkipError
  from mimo_jax.sharding import MeshError
  from mimo_jax.train.checkpoint import CheckpointError
  from mimo_jax.train import export, loop, run_dir
  tokenizer = None
  try:
    if f.export_dir:  # an unusable tokenizer or codec fails now, not after the training
      tokenizer = f.export_tokenizer or run_dir.run_tokenizer(f.workdir, f.config)
      tokenizer_writer(tokenizer, loop.model_of(f.config, f.init_from).vocab_size)
      if f.export_codec:
        load_codec_config(f.export_codec)
  except (ConfigError, CheckpointPathError, TokenizerError) as e:
    print(f"error: --export_dir: {e}", file=sys.stderr)
    sys.exit(2)
  result = loop.command_result(
      lambda: loop.train(f.config, f.workdir, mesh_flag=f.mesh, init_from=f.init_from,
                         force_resume=f.force_resume),
      f.workdir, (ConfigError, MeshError, CheckpointError, SkipError))
  if f.export_dir and result.reason == "finished":
    files = export.export(result.state, result.setup, f.export_dir,
                          dtype=f.export_dtype, tokenizer=tokenizer,
                          codec=f.export_codec)
    if files:
      print(f"exported {', '.join(files)} to {f.export_dir}")


def console() -> None:
  """`python -m mimo_jax.train` and the `mimo-train` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
