"""Export and import of whole checkpoints in the official / HF folder layout (config.json +
safetensors), loadable by `transformers` `from_pretrained` and the official MiMo-Audio code."""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from mimo_jax.config import MimoAudioConfig, load_config, save_config
from mimo_jax.convert.names import from_official, to_official
from mimo_jax.convert.safetensors_io import SafetensorsReader, save_safetensors
from mimo_jax.lm import backbone

SpecsFn = Callable[[MimoAudioConfig], Any]


def export_checkpoint(params: Any, cfg: MimoAudioConfig, out_dir: str, *,
                      dtype: str = "float32", max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes config.json and the safetensors of `params` (official names) into out_dir."""
  files = save_safetensors(to_official(params), out_dir, dtype=dtype,
                           max_shard_bytes=max_shard_bytes)
  save_config(cfg, out_dir)
  return ["config.json", *files]


def import_checkpoint(path: str, cfg: MimoAudioConfig | None = None,
                      specs_fn: SpecsFn = backbone.param_specs) -> tuple[Any, MimoAudioConfig]:
  """Reads a checkpoint folder into the tree `specs_fn(cfg)` describes, in cfg.param_dtype.

  Without cfg, the folder's config.json is read. Tensors the tree does not use (e.g. the audio
  parts when only the backbone is wanted) are left unread.
  """
  cfg = load_config(path) if cfg is None else cfg
  params = from_official(SafetensorsReader(path), specs_fn(cfg), dtype=jnp.dtype(cfg.param_dtype))
  return params, cfg
