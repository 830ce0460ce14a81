"""Reading and writing safetensors checkpoints in the HF layout (one file, or shards + index).

Only safetensors is ever read: no pickle. Both directions go tensor by tensor: reading is lazy
(one tensor per access), and writing takes tensors that may be `LazyTensor`s, each materialised
only when its bytes are written and then dropped, so an export holds at most one tensor (plus a
small cast buffer) beyond the params it reads from.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
from typing import Any, Callable, Iterator, Mapping

import ml_dtypes
import numpy as np
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
# The safetensors header's dtype names.
_HEADER_DTYPES = {"float32": "F32", "bfloat16": "BF16"}
# Rows are cast and written in blocks of about this size: the cast copy never holds a whole
# tensor (a 7B embedding is 2.5 GB in float32).
WRITE_BLOCK_BYTES = 16 * 2**20


class CheckpointPathError(ValueError):
  """A checkpoint path that cannot be read or written; the message names it."""


class LazyTensor:
  """A tensor known by its shape, read only when `np.asarray` asks for it (then not kept)."""

  def __init__(self, shape: tuple[int, ...], read: Callable[[], Any]):
    self.shape = tuple(shape)
    self._read = read

  def __array__(self, dtype=None, copy=None):
    del copy  # every read is a fresh array
    array = np.asarray(self._read())
    return array if dtype is None else array.astype(dtype)


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


def check_dtype(dtype: str) -> None:
  if dtype not in EXPORT_DTYPES:
    raise CheckpointPathError(f"dtype: export dtype must be one of {sorted(EXPORT_DTYPES)}, got "
                              f"{dtype!r}")


def shard_plan(tensors: Mapping[str, Any], dtype: str = "float32",
               max_shard_bytes: int = 5 * 2**30) -> dict[str, dict[str, Any]]:
  """File name -> the safetensors header of that file ({tensor: {dtype, shape, data_offsets}}),
  from the shapes alone: one model.safetensors, or above `max_shard_bytes` the tensors in the
  given order over model-XXXXX-of-YYYYY.safetensors files."""
  check_dtype(dtype)
  itemsize = np.dtype(EXPORT_DTYPES[dtype]).itemsize
  shards: list[dict[str, Any]] = [{}]
  offset = 0
  for name, t in tensors.items():
    size = math.prod(t.shape) * itemsize
    if shards[-1] and offset + size > max_shard_bytes:
      shards.append({})
      offset = 0
    shards[-1][name] = {"dtype": _HEADER_DTYPES[dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
    offset += size
  files = [SINGLE_FILE] if len(shards) == 1 else [
      _shard_name(i + 1, len(shards)) for i in range(len(shards))]
  return dict(zip(files, shards))


def save_safetensors(tensors: Mapping[str, Any], out_dir: str, *, dtype: str = "float32",
                     max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes the tensors (arrays or LazyTensors, cast to `dtype`) as HF safetensors laid out by
  `shard_plan` (with a model.safetensors.index.json when sharded); returns the file names.
  Each tensor is read, written and dropped in turn."""
  plan = shard_plan(tensors, dtype, max_shard_bytes)
  _prepare_dir(out_dir)
  for file, header in plan.items():
    _write_file(os.path.join(out_dir, file), header, tensors, dtype)
  files = list(plan)
  if len(plan) > 1:
    weight_map = {name: file for file, header in plan.items() for name in header}
    total = sum(entry["data_offsets"][1] - entry["data_offsets"][0]
                for header in plan.values() for entry in header.values())
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    files.append(INDEX_FILE)
  return files


def _write_file(path: str, header: dict[str, Any], tensors: Mapping[str, Any],
                dtype: str) -> None:
  """One safetensors file: the header, then each of its tensors' bytes in order.

  Written under a temporary name with plain `open`, so the file gets the default mode (umask)
  like every other file we write, and a killed export leaves no half file under the real name.
  """
  out_dtype = np.dtype(EXPORT_DTYPES[dtype])
  header_bytes = json.dumps({"__metadata__": {"format": "pt"}, **header},
                            separators=(",", ":")).encode()
  header_bytes += b" " * (-len(header_bytes) % 8)  # the format pads the header to 8 bytes
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(header_bytes)))
    f.write(header_bytes)
    for name, entry in header.items():
      array = np.asarray(tensors[name])  # a LazyTensor is read here, dropped once written
      if list(array.shape) != entry["shape"]:
        raise ValueError(f"{name}: read shape {array.shape}, declared {entry['shape']}")
      rows = max(1, WRITE_BLOCK_BYTES // max(1, math.prod(array.shape[1:]) * out_dtype.itemsize))
      blocks = ([array] if array.ndim == 0 else
                (array[start:start + rows] for start in range(0, array.shape[0], rows)))
      for block in blocks:
        f.write(np.ascontiguousarray(block, dtype=out_dtype).tobytes())
  os.replace(tmp, path)


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
