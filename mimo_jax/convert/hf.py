"""Export and import of whole checkpoints in the official / HF folder layout (config.json +
safetensors), loadable by `transformers` `from_pretrained` and the official MiMo-Audio code."""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

import jax.numpy as jnp

from mimo_jax.config import MimoAudioConfig, load_config, save_config
from mimo_jax.convert.names import from_official, to_official
from mimo_jax.convert.safetensors_io import (CheckpointPathError, SafetensorsReader,
                                             save_safetensors)
from mimo_jax.lm import backbone

SpecsFn = Callable[[MimoAudioConfig], Any]

# The files of an HF text tokenizer that `AutoTokenizer.from_pretrained` reads from a folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja")


def export_checkpoint(params: Any, cfg: MimoAudioConfig, out_dir: str, *,
                      dtype: str = "float32", max_shard_bytes: int = 5 * 2**30,
                      tokenizer_dir: str | None = None) -> list[str]:
  """Writes config.json and the safetensors of `params` (official names) into out_dir, and the
  text tokenizer's files from tokenizer_dir beside them (the official loader expects them there)."""
  tokenizer_files = [] if tokenizer_dir is None else _tokenizer_files(tokenizer_dir)
  files = save_safetensors(to_official(params), out_dir, dtype=dtype,
                           max_shard_bytes=max_shard_bytes)
  save_config(cfg, out_dir)
  for name in tokenizer_files:
    shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
  return ["config.json", *files, *tokenizer_files]


def _tokenizer_files(tokenizer_dir: str) -> list[str]:
  present = [name for name in TOKENIZER_FILES
             if os.path.isfile(os.path.join(tokenizer_dir, name))]
  if "tokenizer.json" not in present:
    raise CheckpointPathError(f"tokenizer_dir {tokenizer_dir} has no tokenizer.json")
  return present


def import_checkpoint(path: str, cfg: MimoAudioConfig | None = None,
                      specs_fn: SpecsFn = backbone.param_specs) -> tuple[Any, MimoAudioConfig]:
  """Reads a checkpoint folder into the tree `specs_fn(cfg)` describes, in cfg.param_dtype.

  Without cfg, the folder's config.json is read. Tensors the tree does not use (e.g. the audio
  parts when only the backbone is wanted) are left unread.
  """
  cfg = load_config(path) if cfg is None else cfg
  params = from_official(SafetensorsReader(path), specs_fn(cfg), dtype=jnp.dtype(cfg.param_dtype))
  return params, cfg
