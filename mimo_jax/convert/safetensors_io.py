"""Reading and writing safetensors checkpoints in the HF layout (one file, or shards + index).

Only safetensors is ever read: no pickle. Reading is lazy (memory-mapped per tensor), so a 7B
checkpoint is never held twice in host memory.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


class CheckpointPathError(ValueError):
  """A checkpoint path that cannot be read or written; the message names it."""


def _shard_name(i: int, n: int) -> str:
  return f"model-{i:05d}-of-{n:05d}.safetensors"


def _prepare_dir(out_dir: str) -> None:
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise CheckpointPathError(f"export path {out_dir} exists and is not a directory")
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise CheckpointPathError(f"export path {out_dir} cannot be created: {e.strerror}") from None
  if not os.access(out_dir, os.W_OK):
    raise CheckpointPathError(f"export path {out_dir} is not writable")
  # Shards of an earlier export would otherwise sit beside the new ones and confuse loaders.
  for stale in glob.glob(os.path.join(out_dir, "model*.safetensors*")):
    os.remove(stale)


def save_safetensors(tensors: Mapping[str, np.ndarray], out_dir: str, *, dtype: str = "float32",
                     max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes the tensors (cast to `dtype`) as HF safetensors; returns the file names written.

  Above `max_shard_bytes` the tensors are split, in the given order, into
  model-XXXXX-of-YYYYY.safetensors files with a model.safetensors.index.json weight map.
  """
  if dtype not in EXPORT_DTYPES:
    raise CheckpointPathError(f"dtype: export dtype must be one of {sorted(EXPORT_DTYPES)}, got "
                              f"{dtype!r}")
  _prepare_dir(out_dir)
  cast = {name: np.ascontiguousarray(np.asarray(a).astype(EXPORT_DTYPES[dtype]))
          for name, a in tensors.items()}
  shards: list[dict[str, np.ndarray]] = [{}]
  shard_bytes = 0
  for name, array in cast.items():
    if shards[-1] and shard_bytes + array.nbytes > max_shard_bytes:
      shards.append({})
      shard_bytes = 0
    shards[-1][name] = array
    shard_bytes += array.nbytes
  files = [SINGLE_FILE] if len(shards) == 1 else [
      _shard_name(i + 1, len(shards)) for i in range(len(shards))]
  for file, shard in zip(files, shards):
    tmp = os.path.join(out_dir, file + ".tmp")
    save_file(shard, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out_dir, file))
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(a.nbytes for a in cast.values())},
             "weight_map": {name: file for file, shard in zip(files, shards) for name in shard}}
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
      json.dump(index, f, indent=2)
    files.append(INDEX_FILE)
  return files


class SafetensorsReader(Mapping[str, np.ndarray]):
  """{tensor name: array} over one file or an HF shard index, read tensor by tensor."""

  def __init__(self, path: str):
    if os.path.isdir(path):
      index_path = os.path.join(path, INDEX_FILE)
      if os.path.exists(index_path):
        with open(index_path) as f:
          weight_map = json.load(f)["weight_map"]
        self._files = {name: os.path.join(path, file) for name, file in weight_map.items()}
      elif os.path.exists(os.path.join(path, SINGLE_FILE)):
        self._files = self._names_in(os.path.join(path, SINGLE_FILE))
      else:
        raise CheckpointPathError(f"checkpoint path {path} has neither {SINGLE_FILE} nor "
                                  f"{INDEX_FILE}")
    elif os.path.isfile(path):
      self._files = self._names_in(path)
    else:
      raise CheckpointPathError(f"checkpoint path {path} does not exist")

  @staticmethod
  def _names_in(file: str) -> dict[str, str]:
    try:
      with safe_open(file, "numpy") as f:
        return {name: file for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
      raise CheckpointPathError(f"checkpoint file {file} is not a readable safetensors file: "
                                f"{e}") from None

  def __getitem__(self, name: str) -> np.ndarray:
    with safe_open(self._files[name], "numpy") as f:
      return f.get_tensor(name)

  def __iter__(self) -> Iterator[str]:
    return iter(self._files)

  def __len__(self) -> int:
    return len(self._files)
