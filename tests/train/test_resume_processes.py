"""A data iterator saved by N processes is not restored by another number of them: the resume is
refused up front, naming both counts and the way out."""

import os

import grain
import jax
import numpy as np
import pytest

from mimo_jax.train.checkpoint import Checkpointer, CheckpointError


def _iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def test_a_data_position_of_two_processes_is_not_restored_by_one(tmp_path):
  directory = str(tmp_path / "checkpoints")
  it = _iterator()
  next(it), next(it)
  items = {"params": {"w": np.arange(3.0)}}
  with Checkpointer(directory, async_save=False) as ckpt:
    ckpt.save(2, items, it, force=True)
  data = tmp_path / "checkpoints" / "2" / "data"
  # As two processes would have written it.
  saved = data / "process_0-of-1.json"
  (data / "process_0-of-2.json").write_text(saved.read_text())
  (data / "process_1-of-2.json").write_text(saved.read_text())
  saved.unlink()
  abstract = {"params": {"w": jax.ShapeDtypeStruct((3,), np.float64)}}
  with Checkpointer(directory, read_only=True) as ckpt:
    with pytest.raises(CheckpointError, match=r"step 2 in .* holds the data iterator positions "
                                              r"of 2 processes; this run has 1\. .*resume with 2 "
                                              r"processes, or start a new run .*--init_from"):
      ckpt.restore(abstract, data_iterator=_iterator())
    # The params alone still restore (what --init_from reads).
    restored = ckpt.restore(abstract)
  np.testing.assert_array_equal(restored["params"]["w"], np.arange(3.0))
  assert sorted(f for f in os.listdir(data) if f.startswith("process_")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
