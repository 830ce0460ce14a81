"""Convert weights between training runs and official MiMo-Audio folders, both ways.

  python -m mimo_jax.convert --input=RUN_DIR --output=DIR [--step=N] [--dtype=bfloat16]
      [--shard_size=5GB] [--tokenizer=PATH] [--codec=DIR]
    A training run (run.json + Orbax checkpoints/, LoRA adapters merged) -> an official folder:
    config.json, model.safetensors (shards + index above --shard_size), the text tokenizer's
    files (default: the run's config.data.tokenizer, else the MiMo tokenizer) and, with --codec
    (an official tokenizer folder), the audio tokenizer in DIR/audio_tokenizer. The same code
    as the launcher's --export_dir.

  python -m mimo_jax.convert --input=OFFICIAL_DIR --output=RUN_DIR [--param_dtype=bfloat16]
    An official folder (config.json + safetensors) -> a params-only run: run.json (the model),
    checkpoints/0/params (Orbax) and the folder's text tokenizer, for `train --init_from=RUN_DIR`
    and `generate --ckpt=RUN_DIR`.

The direction follows what --input holds. Tensors stream one at a time both ways (peak memory:
the params plus about one tensor). --mesh spreads the params over this host's devices (e.g. a
TPU VM's chips; default: fsdp over all of them). Exit status: 0 done, 1 unusable input (the
message names it), 2 bad flags.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

from absl import app, flags

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30,
          "GB": 2**30}


def define_flags() -> None:
  """The command's flags (defined only when run as a command)."""
  flags.DEFINE_string("input", None, "A training run directory or an official folder.",
                      required=True)
  flags.DEFINE_string("output", None, "The folder to write (official folder or run).",
                      required=True)
  flags.DEFINE_integer("step", None, "Run -> official: the checkpoint step (default: latest).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                    "Run -> official: the safetensors dtype (the official release loads bf16).")
  flags.DEFINE_string("shard_size", "5GB", "Run -> official: the largest safetensors file, e.g. "
                      "5GB, 500MB; above it the tensors go to shards with an index.")
  flags.DEFINE_string("tokenizer", None, "Run -> official: the text tokenizer (tokenizer.json "
                      "or an HF tokenizer folder) instead of the run's.")
  flags.DEFINE_string("codec", None, "Run -> official: an official audio tokenizer folder to "
                      "write into OUTPUT/audio_tokenizer.")
  flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"],
                    "Official -> run: the dtype of the stored params.")
  flags.DEFINE_string("mesh", "data:1,fsdp:-1,tensor:1", "Mesh over this host's devices.")


def parse_size(text: str) -> int:
  """'5GB' -> 5 * 2**30 (binary units, as HF's max_shard_size)."""
  match = _SIZE.match(text)
  if not match or float(match.group(1)) <= 0:
    raise app.UsageError(f"--shard_size={text}: expected a positive size such as 5GB or 500MB")
  return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def to_official(run_dir: str, out_dir: str, *, step: int | None, dtype: str,
                max_shard_bytes: int, tokenizer: str | None, codec: str | None,
                mesh_flag: str) -> list[str]:
  from mimo_jax import sharding  # noqa: PLC0415 (JAX and Orbax only when run)
  from mimo_jax.train import export, run_dir as runs  # noqa: PLC0415
  mesh = sharding.make_mesh(mesh_flag)
  state, setup, cfg = runs.load_run(run_dir, mesh, step)
  return export.export(state, setup, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes,
                       tokenizer=tokenizer or runs.run_tokenizer(run_dir, cfg), codec=codec)


def to_run(official_dir: str, run_dir: str, *, param_dtype: str, mesh_flag: str) -> list[str]:
  from mimo_jax import sharding  # noqa: PLC0415
  from mimo_jax.config import ConfigError, load_config  # noqa: PLC0415
  from mimo_jax.convert.hf import import_checkpoint, tokenizer_writer  # noqa: PLC0415
  from mimo_jax.lm import model  # noqa: PLC0415
  from mimo_jax.train import run_json  # noqa: PLC0415
  from mimo_jax.train.checkpoint import Checkpointer  # noqa: PLC0415
  from mimo_jax.train.run_dir import CHECKPOINT_DIR, PARAMS  # noqa: PLC0415
  if os.path.exists(os.path.join(run_dir, CHECKPOINT_DIR)):
    raise ConfigError(f"--output={run_dir}: already holds checkpoints; choose a new folder")
  cfg = load_config(official_dir, param_dtype=param_dtype)
  has_tokenizer = os.path.isfile(os.path.join(official_dir, "tokenizer.json"))
  write_tokenizer = tokenizer_writer(official_dir if has_tokenizer else None, cfg.vocab_size)
  params, _ = import_checkpoint(official_dir, cfg, specs_fn=model.param_specs,
                                mesh=sharding.make_mesh(mesh_flag))
  with Checkpointer(os.path.join(run_dir, CHECKPOINT_DIR), async_save=False) as ckpt:
    ckpt.save(0, {PARAMS: params}, force=True)
  run_json.write(run_dir, {"model": dataclasses.asdict(cfg), "imported_from": official_dir})
  return [f"{CHECKPOINT_DIR}/0/{PARAMS}", run_json.RUN_JSON, *write_tokenizer(run_dir)]


def run(input_path: str, output: str, *, step: int | None = None, dtype: str = "float32",
        max_shard_bytes: int = 5 * 2**30, tokenizer: str | None = None, codec: str | None = None,
        param_dtype: str = "float32", mesh_flag: str = "data:1,fsdp:-1,tensor:1") -> int:
  """The command; returns its exit status."""
  from mimo_jax.config import ConfigError  # noqa: PLC0415
  from mimo_jax.convert.names import ConversionError  # noqa: PLC0415
  from mimo_jax.convert.safetensors_io import CheckpointPathError  # noqa: PLC0415
  from mimo_jax.data.tokenizer import TokenizerError  # noqa: PLC0415
  from mimo_jax.train.checkpoint import CheckpointError, quiet_orbax_logs  # noqa: PLC0415
  quiet_orbax_logs()
  try:
    if os.path.isfile(os.path.join(input_path, "config.json")):
      files = to_run(input_path, output, param_dtype=param_dtype, mesh_flag=mesh_flag)
    elif os.path.isdir(input_path):
      files = to_official(input_path, output, step=step, dtype=dtype,
                          max_shard_bytes=max_shard_bytes, tokenizer=tokenizer, codec=codec,
                          mesh_flag=mesh_flag)
    else:
      raise ConfigError(f"--input={input_path}: no such folder")
  except (ConfigError, ConversionError, CheckpointPathError, TokenizerError,
          CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if files:  # other processes of a multi-process export write nothing
    print(f"wrote {', '.join(files)} to {output}")
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  sys.exit(run(f.input, f.output, step=f.step, dtype=f.dtype,
               max_shard_bytes=parse_size(f.shard_size), tokenizer=f.tokenizer, codec=f.codec,
               param_dtype=f.param_dtype, mesh_flag=f.mesh))


def console() -> None:
  """`python -m mimo_jax.convert` and the `mimo-convert` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
