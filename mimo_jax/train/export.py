"""A training run's params as an official MiMo-Audio folder (LoRA adapters merged): what the
launcher's `--export_dir` and `python -m mimo_jax.convert` write, with one code path.

The export streams: `lora.merged_view` merges an adapted kernel one layer at a time as it is
written, and `convert.hf.export_checkpoint` reads and writes one tensor at a time.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from mimo_jax.convert.hf import export_checkpoint
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.train import config as train_config
from mimo_jax.train import lora, run_json
from mimo_jax.train.checkpoint import Checkpointer
from mimo_jax.train.loop import CHECKPOINT_DIR, PARAMS, TRAIN, split_state
from mimo_jax.train.state import TrainSetup, abstract_params_of, abstract_state

MAX_SHARD_BYTES = 5 * 2**30  # the HF default shard size


class ExportError(ValueError):
  """A run cannot be exported as asked; the message names the path or flag."""


def run_tokenizer(run_dir: str, cfg: ml_collections.ConfigDict) -> str | TextTokenizer:
  """The text tokenizer of a run: the one in its folder (a run written by `convert` keeps the
  official folder's), else its config.data.tokenizer, else the MiMo tokenizer."""
  if os.path.isfile(os.path.join(run_dir, "tokenizer.json")):
    return run_dir
  return cfg.data.tokenizer or TextTokenizer.mimo()


def export(state: dict, setup: TrainSetup, out_dir: str, *, dtype: str = "float32",
           max_shard_bytes: int = MAX_SHARD_BYTES,
           tokenizer: str | TextTokenizer | None = None, codec: str | None = None) -> list[str]:
  """Writes state["params"] (with state["lora"] merged, if any) as an official checkpoint;
  see `export_checkpoint` for the tokenizer and codec. Every process calls it."""
  params = state["params"]
  if "lora" in state:
    params = lora.merged_view(params, state["lora"], setup.opt.lora_rank, setup.opt.lora_alpha)
  return export_checkpoint(params, setup.model, out_dir, dtype=dtype,
                           max_shard_bytes=max_shard_bytes, tokenizer=tokenizer, codec=codec)


def load_run(run_dir: str, mesh: jax.sharding.Mesh, step: int | None = None
             ) -> tuple[dict, TrainSetup, ml_collections.ConfigDict]:
  """The params (and LoRA adapters) of a run at `step` (default: the latest), its setup (the
  model its run.json records) and its config. A run written by `convert` holds params alone: it
  gets the default config (no adapters)."""
  stored = run_json.read(run_dir)
  if stored is None or "model" not in stored:
    raise ExportError(f"--input={run_dir}: not a training run (no run.json with a model); an "
                      f"official folder has a config.json")
  cfg = ml_collections.ConfigDict(stored.get("config") or train_config.defaults().to_dict())
  setup = TrainSetup.from_config(cfg, run_json.model_config(stored))
  abstract = {PARAMS: abstract_params_of(setup, mesh)}
  if setup.lora_specs is not None:  # the adapters are saved with the optimizer state
    abstract[TRAIN] = split_state(abstract_state(setup, mesh))[TRAIN]
  with Checkpointer(os.path.join(run_dir, CHECKPOINT_DIR), read_only=True) as ckpt:
    items = ckpt.restore(abstract, step)
  state = {"params": items[PARAMS]}
  if TRAIN in items:
    state["lora"] = items[TRAIN]["lora"]
  return state, setup, cfg
