"""What is at a path: the one reader of run directories and official folders.

Every program that takes weights by path (`train --init_from`, `generate --ckpt`, `evaluate`,
`convert`, `train_codec`'s init_from, the demo) asks this module, so a layout is known in one
place. Paths may be local or gs:// (existence checks go through etils.epath).

  official LM folder    config.json + model*.safetensors (+ the text tokenizer's files)
  LM run                run.json (the model its params have) + checkpoints/<step>/{params,
                        train,data}; the params-only runs `convert` imports have
                        checkpoints/0/params alone
  official tokenizer    config.json + model.safetensors (the audio tokenizer, i.e. codec)
  codec run             run.json (the config and the codec's official config) +
                        codec_config.json + checkpoints/<step>/{state,data} + export/ (an
                        official tokenizer folder of its final weights)

A LoRA run's `params` item is the frozen base model (the adapters are saved with the optimizer
state in `train`): loading it alone is refused; `load_run` (what export reads) takes both.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging
from etils import epath

from mimo_jax import sharding
from mimo_jax.codec.checkpoint import import_codec
from mimo_jax.codec.config import CodecConfig
from mimo_jax.config import ConfigError, MimoAudioConfig, load_config
from mimo_jax.convert.hf import import_checkpoint
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.lm import model as lm_model
from mimo_jax.train import config as train_config
from mimo_jax.train import run_json
from mimo_jax.train.checkpoint import Checkpointer, restore_params
from mimo_jax.train.state import TrainSetup, abstract_params_of, abstract_state

CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
# The LM run's checkpoint items: params alone (what other runs load) and the rest of the state.
PARAMS, TRAIN = "params", "train"


def split_state(state: dict) -> dict:
  """The LM state as its two checkpoint items."""
  return {PARAMS: state["params"], TRAIN: {k: v for k, v in state.items() if k != "params"}}


def join_state(items: dict) -> dict:
  return {"params": items[PARAMS], **items[TRAIN]}


def is_official(path: str) -> bool:
  """Whether `path` is an official folder (its config.json is the model)."""
  return (epath.Path(path) / "config.json").exists()


def run_root(path: str) -> str:
  """The run directory of a run or of its checkpoints/ folder."""
  path = path.rstrip("/")
  return os.path.dirname(path) if os.path.basename(path) == CHECKPOINT_DIR else path


def checkpoints_of(path: str) -> str:
  """The checkpoints/ folder of a run (or `path` itself, a checkpoints folder given as such)."""
  inner = epath.Path(path) / CHECKPOINT_DIR
  return os.path.join(path, CHECKPOINT_DIR) if inner.is_dir() else path


def refuse_lora_run(run_dir: str, flag: str) -> None:
  """Refuses (ConfigError naming `flag`) the params item of a LoRA run, its frozen base."""
  rank = (run_json.read(run_root(run_dir)) or {}).get("optimizer", {}).get("lora_rank", 0)
  if rank:
    raise ConfigError(f"{flag}={run_dir}: this run trained LoRA adapters (rank {rank}) and its "
                      f"params checkpoint is the frozen base; export it with the adapters "
                      f"merged (python -m mimo_jax.convert --input={run_dir} --output=DIR, or "
                      f"the launcher's --export_dir=DIR) and use DIR")


def model_config(path: str, **runtime) -> MimoAudioConfig | None:
  """The model at `path` (an official folder's config.json, or what a run's run.json records),
  with `runtime` compute fields (dtype, remat, ...); None for a run without a run.json."""
  if is_official(path):
    return load_config(path, **runtime)
  stored = run_json.read(run_root(path))
  if stored is None or "model" not in stored:  # no run.json, or a codec run's
    return None
  return run_json.model_config(stored, **runtime)


def one_device_mesh() -> jax.sharding.Mesh:
  """The mesh of a program that runs on the first device alone (generation, evaluation)."""
  return sharding.make_mesh(devices=jax.devices()[:1])


def load_params(path: str, flag: str, *, mesh: jax.sharding.Mesh | None = None,
                step: int | None = None, model: MimoAudioConfig | None = None,
                **runtime) -> tuple[MimoAudioConfig, dict]:
  """The model config and params of an official folder or an LM run (its latest checkpoint
  unless `step`), placed on `mesh` (default: the first device). `model` replaces the config the
  path records (a run that already resolved it); `runtime` sets compute fields."""
  refuse_lora_run(path, flag)
  model = model or model_config(path, **runtime)
  if model is None:
    raise ConfigError(f"{flag}={path}: neither an official folder (config.json) nor a training "
                      f"run (run.json + checkpoints/)")
  mesh = mesh or one_device_mesh()
  name = flag.lstrip("-")
  if is_official(path):
    logging.info("%s: importing official safetensors from %s", name, path)
    params, _ = import_checkpoint(path, model, specs_fn=lm_model.param_specs, mesh=mesh)
  else:
    ckpt_dir = checkpoints_of(path)
    logging.info("%s: params of the %s in %s", name,
                 "latest checkpoint" if step is None else f"checkpoint {step}", ckpt_dir)
    params = restore_params(ckpt_dir, abstract_params_of(model, mesh), step, item=PARAMS)
  return model, params


def load_run(run_dir: str, mesh: jax.sharding.Mesh, step: int | None = None
             ) -> tuple[dict, TrainSetup, ml_collections.ConfigDict]:
  """The params and LoRA adapters of an LM run at `step` (default: the latest), its setup (the
  model its run.json records) and its config: what an export reads. A run written by `convert`
  holds params alone and gets the default config (no adapters)."""
  stored = run_json.read(run_dir)
  if stored is None or "model" not in stored:
    raise ConfigError(f"--input={run_dir}: not a training run (no run.json with a model); an "
                      f"official folder has a config.json")
  cfg = ml_collections.ConfigDict(stored.get("config") or train_config.defaults().to_dict())
  setup = TrainSetup.from_config(cfg, run_json.model_config(stored))
  abstract = {PARAMS: abstract_params_of(setup.model, mesh)}
  if setup.lora_specs is not None:  # the adapters are saved with the optimizer state
    abstract[TRAIN] = split_state(abstract_state(setup, mesh))[TRAIN]
  with Checkpointer(os.path.join(run_dir, CHECKPOINT_DIR), read_only=True) as ckpt:
    items = ckpt.restore(abstract, step)
  state = {"params": items[PARAMS]}
  if TRAIN in items:
    state["lora"] = items[TRAIN]["lora"]
  return state, setup, cfg


def run_tokenizer(run_dir: str, cfg: ml_collections.ConfigDict) -> str | TextTokenizer:
  """The text tokenizer of a run: the one in its folder (a run written by `convert` keeps the
  official folder's), else its config.data.tokenizer, else the MiMo tokenizer."""
  if (epath.Path(run_dir) / "tokenizer.json").exists():
    return run_dir
  return cfg.data.tokenizer or TextTokenizer.mimo()


def codec_folder(path: str) -> str:
  """The official tokenizer folder at `path`: a codec run's export/, else `path` itself."""
  export = epath.Path(path) / EXPORT_DIR
  return os.path.join(path, EXPORT_DIR) if (export / "config.json").exists() else path


def load_codec(path: str) -> tuple[dict, CodecConfig]:
  """(params, config) of an official tokenizer folder or of a codec run (its export/); a path
  that is neither fails naming it (no config.json)."""
  return import_codec(codec_folder(path))
