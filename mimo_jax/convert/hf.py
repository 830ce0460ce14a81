"""Export and import of whole checkpoints in the official / HF folder layout (config.json +
safetensors + the text tokenizer's files), loadable by `transformers` `from_pretrained`,
`AutoTokenizer` and the official MiMo-Audio code.

Both directions go one tensor at a time (`names.to_official` is lazy, `names.from_official`
builds each leaf in place), so neither holds more than one tensor beyond the params.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mimo_jax.codec.checkpoint import export_codec, import_codec
from mimo_jax.codec.config import load_codec_config
from mimo_jax.config import MimoAudioConfig, load_config, save_config
from mimo_jax.convert.names import from_official, to_official
from mimo_jax.convert.safetensors_io import (CheckpointPathError, SafetensorsReader, check_dtype,
                                             save_safetensors)
from mimo_jax.data.tokenizer import TextTokenizer, TokenizerError
from mimo_jax.lm import backbone

SpecsFn = Callable[[MimoAudioConfig], Any]

# The files of an HF text tokenizer that `AutoTokenizer.from_pretrained` reads from a folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja")


AUDIO_TOKENIZER_DIR = "audio_tokenizer"


def export_checkpoint(params: Any, cfg: MimoAudioConfig, out_dir: str, *,
                      dtype: str = "float32", max_shard_bytes: int = 5 * 2**30,
                      tokenizer: str | TextTokenizer | None = None,
                      codec: str | None = None) -> list[str]:
  """Writes config.json and the safetensors of `params` (official names) into out_dir, the text
  tokenizer beside them (the official loader reads it from the same folder; see
  `tokenizer_writer`) and, from an official tokenizer folder `codec`, the audio tokenizer in
  out_dir/audio_tokenizer. Returns the files written (relative to out_dir).

  The tokenizer and codec are checked before anything is written. Tensors are read one at a
  time; one spread over processes is gathered (a collective): every process calls this, and
  process 0 alone writes (the others return []).
  """
  check_dtype(dtype)
  write_tokenizer = tokenizer_writer(tokenizer, cfg.vocab_size)
  codec_cfg = None if codec is None else load_codec_config(codec)
  tensors = to_official(params)
  if jax.process_index() != 0:
    for tensor in tensors.values():  # the reads process 0 makes, in its order
      np.asarray(tensor)
    return []
  files = ["config.json", *save_safetensors(tensors, out_dir, dtype=dtype,
                                            max_shard_bytes=max_shard_bytes)]
  save_config(cfg, out_dir)
  files += write_tokenizer(out_dir)
  if codec is not None:
    codec_params, _ = import_codec(codec, codec_cfg)
    written = export_codec(codec_params, codec_cfg, os.path.join(out_dir, AUDIO_TOKENIZER_DIR),
                           dtype=dtype)
    files += [f"{AUDIO_TOKENIZER_DIR}/{name}" for name in written]
  return files


def tokenizer_writer(tokenizer: str | TextTokenizer | None,
                     vocab_size: int) -> Callable[[str], list[str]]:
  """Checks a text tokenizer for a model of `vocab_size` rows and returns what writes it into a
  folder: a folder of HF tokenizer files is copied as it is, a tokenizer.json file or a
  TextTokenizer is saved by `TextTokenizer.save`; None writes nothing."""
  if tokenizer is None:
    return lambda out_dir: []
  if isinstance(tokenizer, str) and os.path.isdir(tokenizer):
    if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
      raise CheckpointPathError(f"tokenizer folder {tokenizer} has no tokenizer.json")
    _check_fits(TextTokenizer.load(tokenizer), tokenizer, vocab_size)
    present = [name for name in TOKENIZER_FILES
               if os.path.isfile(os.path.join(tokenizer, name))]

    def copy(out_dir: str) -> list[str]:
      for name in present:
        shutil.copyfile(os.path.join(tokenizer, name), os.path.join(out_dir, name))
      return present
    return copy
  loaded = TextTokenizer.load(tokenizer) if isinstance(tokenizer, str) else tokenizer
  _check_fits(loaded, tokenizer if isinstance(tokenizer, str) else "the text tokenizer",
              vocab_size)
  return loaded.save


def _check_fits(tokenizer: TextTokenizer, name: str, vocab_size: int) -> None:
  try:
    tokenizer.check_fits(vocab_size)
  except TokenizerError as e:
    raise TokenizerError(f"{name}: {e}") from None


def import_checkpoint(path: str, cfg: MimoAudioConfig | None = None,
                      specs_fn: SpecsFn = backbone.param_specs,
                      mesh: jax.sharding.Mesh | None = None) -> tuple[Any, MimoAudioConfig]:
  """Reads a checkpoint folder into the tree `specs_fn(cfg)` describes, in cfg.param_dtype,
  sharded over `mesh` (default: the first device).

  Without cfg, the folder's config.json is read. Tensors the tree does not use (e.g. the audio
  parts when only the backbone is wanted) are left unread.
  """
  cfg = load_config(path) if cfg is None else cfg
  params = from_official(SafetensorsReader(path), specs_fn(cfg), dtype=jnp.dtype(cfg.param_dtype),
                         mesh=mesh)
  return params, cfg
