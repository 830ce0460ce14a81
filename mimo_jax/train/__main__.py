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

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local or gs://).")
_MESH = flags.DEFINE_string("mesh", None, "Mesh axes and sizes; default: the config's mesh.")
_INIT_FROM = flags.DEFINE_string("init_from", None, "Params to start from (see module doc).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "When the run finishes, write its params "
                                  "here as an official MiMo-Audio checkpoint (LoRA merged).")
_EXPORT_DTYPE = flags.DEFINE_enum("export_dtype", "float32", ["float32", "bfloat16"],
                                  "dtype of the exported safetensors.")
_EXPORT_TOKENIZER = flags.DEFINE_string("export_tokenizer", None, "Text tokenizer for the export "
                                        "(tokenizer.json or HF folder; default: the run's).")
_EXPORT_CODEC = flags.DEFINE_string("export_codec", None, "Official audio tokenizer folder to "
                                    "write into export_dir/audio_tokenizer.")
_FORCE_RESUME = flags.DEFINE_bool("force_resume", False, "Resume even when the config changes "
                                  "the model, the data stream or the optimizer state layout.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "jax.distributed.initialize() with no "
                               "arguments (TPU pods and clusters JAX detects).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  import jax
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _MULTIHOST.value:
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mimo_jax.train.checkpoint import quiet_orbax_logs
  quiet_orbax_logs()
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  if not os.path.isfile(config_file):
    print(f"error: --config={config_file}: no such file", file=sys.stderr)
    sys.exit(2)
  _initialize_distributed()  # before any other JAX call
  from mimo_jax.codec.config import load_codec_config
  from mimo_jax.config import ConfigError
  from mimo_jax.convert.hf import tokenizer_writer
  from mimo_jax.convert.safetensors_io import CheckpointPathError
  from mimo_jax.data.tokenizer import TokenizerError
  from mimo_jax.data.packing import SkipError
  from mimo_jax.sharding import MeshError
  from mimo_jax.train.checkpoint import CheckpointError
  from mimo_jax.train.preemption import EXIT_STUCK, Preempted
  from mimo_jax.train import export, loop
  tokenizer = None
  try:
    if _EXPORT_DIR.value:  # an unusable tokenizer or codec fails now, not after the training
      tokenizer = _EXPORT_TOKENIZER.value or export.run_tokenizer(_WORKDIR.value, _CONFIG.value)
      tokenizer_writer(tokenizer, loop.model_of(_CONFIG.value, _INIT_FROM.value).vocab_size)
      if _EXPORT_CODEC.value:
        load_codec_config(_EXPORT_CODEC.value)
  except (ConfigError, CheckpointPathError, TokenizerError) as e:
    print(f"error: --export_dir: {e}", file=sys.stderr)
    sys.exit(2)
  try:
    result = loop.train(_CONFIG.value, _WORKDIR.value, mesh_flag=_MESH.value,
                        init_from=_INIT_FROM.value, force_resume=_FORCE_RESUME.value)
  except (ConfigError, MeshError, CheckpointError, SkipError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted:
    message = (f"SIGTERM before the run could save; the latest checkpoint in {_WORKDIR.value} "
               f"stands")
    logging.warning("%s", message)
    print(message, file=sys.stderr)
    sys.exit(EXIT_STUCK)
  except loop.NonFiniteError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"{result.reason} at step {result.step}; checkpoint {result.checkpoint_step} in "
        f"{_WORKDIR.value}")
  if _EXPORT_DIR.value and result.reason == "finished":
    files = export.export(result.state, result.setup, _EXPORT_DIR.value,
                          dtype=_EXPORT_DTYPE.value, tokenizer=tokenizer,
                          codec=_EXPORT_CODEC.value)
    if files:
      print(f"exported {', '.join(files)} to {_EXPORT_DIR.value}")


if __name__ == "__main__":
  app.run(main)
