"""Round trips between our params and the official / HF safetensors layout, and their errors."""

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from mimo_jax import config
from mimo_jax.convert.hf import export_checkpoint, import_checkpoint
from mimo_jax.convert.names import ConversionError, official_shapes, to_official
from mimo_jax.convert.safetensors_io import (INDEX_FILE, CheckpointPathError, SafetensorsReader,
                                             save_safetensors)
from mimo_jax.lm import backbone
from tests.helpers import random_params

CFG = config.tiny()


def _assert_bit_identical(a, b):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, path
    assert x.tobytes() == y.tobytes(), path


def test_names_are_the_official_qwen2_names():
  names = set(official_shapes(backbone.param_specs(CFG)))
  assert "model.embed_tokens.weight" in names and "lm_head.weight" in names
  assert "model.layers.1.self_attn.q_proj.bias" in names
  assert "model.layers.0.mlp.down_proj.weight" in names and "model.norm.weight" in names
  assert names == set(to_official(random_params(backbone.param_specs(CFG))))
  hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**CFG.to_official_dict()))
  assert names == set(hf.state_dict())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_is_bit_identical(tmp_path, dtype):
  params = random_params(backbone.param_specs(CFG))
  params = jax.tree.map(lambda a: np.asarray(a).astype(ml_dtypes.bfloat16 if dtype == "bfloat16"
                                                       else np.float32), params)
  export_checkpoint(params, CFG, str(tmp_path), dtype=dtype)
  back, cfg = import_checkpoint(str(tmp_path), CFG.replace(param_dtype=dtype))
  assert cfg == CFG.replace(param_dtype=dtype)
  _assert_bit_identical(params, back)


def test_sharded_export_writes_index_and_loads_everywhere(tmp_path):
  params = random_params(backbone.param_specs(CFG))
  files = export_checkpoint(params, CFG, str(tmp_path), max_shard_bytes=100_000)
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) > 2 and INDEX_FILE in files
  with open(tmp_path / INDEX_FILE) as f:
    index = json.load(f)
  assert set(index["weight_map"]) == set(to_official(params))
  assert set(index["weight_map"].values()) == set(shards)
  back, _ = import_checkpoint(str(tmp_path), CFG)
  _assert_bit_identical(params, back)
  hf = transformers.Qwen2ForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
  np.testing.assert_array_equal(hf.lm_head.weight.detach().numpy(),
                                np.asarray(params["lm_head"]["kernel"]).T)
  # Re-exporting unsharded into the same folder removes the old shards and index.
  export_checkpoint(params, CFG, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_transformers_save_pretrained_imports_with_the_same_logits(tmp_path):
  torch.manual_seed(0)
  hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
      **CFG.to_official_dict(), initializer_range=0.2)).eval()
  hf.save_pretrained(str(tmp_path))
  params, cfg = import_checkpoint(str(tmp_path), config.load_config(str(tmp_path),
                                                                    dtype="float32"))
  tokens = np.random.RandomState(0).randint(0, CFG.vocab_size, (2, 9))
  with torch.no_grad():
    ref = hf(torch.tensor(tokens)).logits.numpy()
  ours, _ = backbone.forward(params, cfg, tokens_bt=tokens)
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


def test_bad_export_path_is_named(tmp_path):
  params = random_params(backbone.param_specs(CFG))
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  with pytest.raises(CheckpointPathError, match=f"export path {blocker} exists and is not a "
                                                "directory"):
    export_checkpoint(params, CFG, str(blocker))
  with pytest.raises(CheckpointPathError, match="cannot be created"):
    export_checkpoint(params, CFG, str(blocker / "below_a_file"))
  with pytest.raises(CheckpointPathError, match="export dtype must be one of"):
    export_checkpoint(params, CFG, str(tmp_path / "out"), dtype="int8")


def test_bad_import_paths_and_tensors_are_named(tmp_path):
  with pytest.raises(CheckpointPathError, match=f"checkpoint path {tmp_path}/nowhere does not "
                                                "exist"):
    SafetensorsReader(str(tmp_path / "nowhere"))
  with pytest.raises(CheckpointPathError, match="has neither model.safetensors"):
    SafetensorsReader(str(tmp_path))
  corrupt = tmp_path / "corrupt.safetensors"
  corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
  with pytest.raises(CheckpointPathError, match="not a readable safetensors file"):
    SafetensorsReader(str(corrupt))

  tensors = to_official(random_params(backbone.param_specs(CFG)))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_safetensors(tensors, str(tmp_path / "missing"))
  with pytest.raises(ConversionError, match=r"1 tensor\(s\) missing .*layers.1.mlp.up_proj"):
    import_checkpoint(str(tmp_path / "missing"), CFG)

  tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
  save_safetensors(tensors, str(tmp_path / "misshaped"))
  with pytest.raises(ConversionError, match=r"model.layers.1.mlp.up_proj.weight: shape \(3, 3\)"):
    import_checkpoint(str(tmp_path / "misshaped"), CFG)
