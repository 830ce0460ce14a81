"""The complete export folder (issue 19): official names, shapes and dtypes for the tiny and 7B
configs, the text tokenizer and audio tokenizer beside the weights, `python -m mimo_jax.convert`
both ways (bit-identical in float32), LoRA merged, default file modes."""

import json
import os
import stat
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from mimo_jax import config, sharding
from mimo_jax.codec.checkpoint import ISTFT_WINDOW
from mimo_jax.convert import __main__ as convert_cli
from mimo_jax.convert.hf import AUDIO_TOKENIZER_DIR, export_checkpoint, import_checkpoint
from mimo_jax.convert.names import to_official
from mimo_jax.convert.safetensors_io import SINGLE_FILE, SafetensorsReader, shard_plan
from mimo_jax.lm import model
from mimo_jax.train import config as train_config
from mimo_jax.train import lora, run_json
from mimo_jax.train.checkpoint import Checkpointer
from mimo_jax.train.run_dir import CHECKPOINT_DIR, split_state
from mimo_jax.train.state import TrainSetup, create_state
from tests.helpers import random_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH = sharding.make_mesh("data:1,fsdp:1,tensor:1", devices=jax.devices()[:1])


def _header(path: str) -> dict:
  """{name: (shape, safetensors dtype)} of every tensor in a folder (index or single file)."""
  out = {}
  index = os.path.join(path, "model.safetensors.index.json")
  files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
           else [SINGLE_FILE])
  for file in files:
    with open(os.path.join(path, file), "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      header = json.loads(f.read(n))
    out.update({k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items()
                if k != "__metadata__"})
  return out


def _default_mode() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def _assert_default_modes(folder: str) -> None:
  for root, _, files in os.walk(folder):
    for name in files:
      mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
      assert mode == _default_mode(), (os.path.join(root, name), oct(mode))


def _assert_same_tensors(a: str, b: str, skip: tuple[str, ...] = ()) -> None:
  ours, theirs = SafetensorsReader(a), SafetensorsReader(b)
  assert set(ours) == set(theirs)
  for name in set(theirs) - set(skip):
    x, y = ours[name], theirs[name]
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def _spec_table_7b() -> dict[str, tuple[int, ...]]:
  """Spec §4.1, written out independently of our name rule."""
  out = {"model.embed_tokens.weight": (151680, 4096), "model.norm.weight": (4096,),
         "lm_head.weight": (151680, 4096), "speech_group_downcast.weight": (4096, 4096),
         "hidden_states_downcast.weight": (1024, 4096),
         "input_local_transformer.norm.weight": (1024,), "local_transformer.norm.weight": (1024,)}
  for i in range(36):
    p = f"model.layers.{i}."
    out.update({p + "self_attn.q_proj.weight": (4096, 4096), p + "self_attn.q_proj.bias": (4096,),
                p + "self_attn.k_proj.weight": (1024, 4096), p + "self_attn.k_proj.bias": (1024,),
                p + "self_attn.v_proj.weight": (1024, 4096), p + "self_attn.v_proj.bias": (1024,),
                p + "self_attn.o_proj.weight": (4096, 4096),
                p + "mlp.gate_proj.weight": (11008, 4096), p + "mlp.up_proj.weight": (11008, 4096),
                p + "mlp.down_proj.weight": (4096, 11008),
                p + "input_layernorm.weight": (4096,),
                p + "post_attention_layernorm.weight": (4096,)})
  for stack, n in (("input_local_transformer", 6), ("local_transformer", 16)):
    for i in range(n):
      p = f"{stack}.layers.{i}."
      for proj in ("q_proj", "k_proj", "v_proj"):
        out.update({p + f"self_attn.{proj}.weight": (1024, 1024),
                    p + f"self_attn.{proj}.bias": (1024,)})
      out.update({p + "self_attn.o_proj.weight": (1024, 1024),
                  p + "mlp.gate_proj.weight": (4096, 1024), p + "mlp.up_proj.weight": (4096, 1024),
                  p + "mlp.down_proj.weight": (1024, 4096),
                  p + "input_layernorm.weight": (1024,),
                  p + "post_attention_layernorm.weight": (1024,)})
  for r in range(8):
    rows = 1025 if r < 2 else 129
    out[f"speech_embeddings.{r}.weight"] = (rows, 1024)
    out[f"local_transformer_lm_heads.{r}.weight"] = (rows, 1024)
  return out


def test_7b_export_plan_is_the_official_names_shapes_and_dtype():
  specs = model.param_specs(config.preset("7b"))
  plan = shard_plan(to_official(specs), "bfloat16", 5 * 2**30)  # nothing is allocated or read
  planned = {name: (tuple(e["shape"]), e["dtype"]) for h in plan.values() for name, e in h.items()}
  assert planned == {name: (shape, "BF16") for name, shape in _spec_table_7b().items()}
  sizes = [max(e["data_offsets"][1] for e in h.values()) for h in plan.values()]
  n = len(plan)
  assert max(sizes) <= 5 * 2**30 and list(plan) == [
      f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiny_export_has_the_official_fixture_names_shapes_and_dtype(tmp_path, dtype,
                                                                     official_tiny_lm_dir):
  params, cfg = import_checkpoint(official_tiny_lm_dir, config.load_config(official_tiny_lm_dir),
                                  specs_fn=model.param_specs)
  export_checkpoint(params, cfg, str(tmp_path), dtype=dtype, tokenizer=official_tiny_lm_dir)
  want = "F32" if dtype == "float32" else "BF16"
  assert _header(str(tmp_path)) == {k: (shape, want) for k, (shape, _) in
                                    _header(official_tiny_lm_dir).items()}
  if dtype == "bfloat16":  # the cast is torch's (round to nearest even)
    ours = SafetensorsReader(str(tmp_path))["lm_head.weight"]
    with safe_open(os.path.join(official_tiny_lm_dir, SINGLE_FILE), "pt") as f:
      ref = f.get_tensor("lm_head.weight").to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(ours.astype(np.float32), ref)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert tokenizer.convert_tokens_to_ids("<|empty|>") == 412
  _assert_default_modes(str(tmp_path))


def test_convert_round_trip_through_an_orbax_run_is_bit_identical(tmp_path, official_tiny_lm_dir,
                                                                  official_tiny_codec_dir):
  run_dir, out = str(tmp_path / "run"), str(tmp_path / "official")
  assert convert_cli.run(official_tiny_lm_dir, run_dir) == 0
  assert run_json.read(run_dir)["model"]["hidden_size"] == 64
  assert convert_cli.run(run_dir, out, codec=official_tiny_codec_dir) == 0
  _assert_same_tensors(out, official_tiny_lm_dir)
  # The ISTFT window is recomputed, not a parameter (tests/codec/test_checkpoint.py).
  _assert_same_tensors(os.path.join(out, AUDIO_TOKENIZER_DIR), official_tiny_codec_dir,
                       skip=(ISTFT_WINDOW,))
  assert sorted(os.listdir(out)) == sorted(
      [AUDIO_TOKENIZER_DIR, "config.json", SINGLE_FILE, "special_tokens_map.json",
       "tokenizer.json", "tokenizer_config.json"])
  transformers.AutoTokenizer.from_pretrained(out)
  for folder in (run_dir, out):
    _assert_default_modes(folder)
  # Converting into a folder that already holds checkpoints is refused.
  assert convert_cli.run(official_tiny_lm_dir, run_dir) == 1


def test_lora_run_exports_with_the_adapters_merged(tmp_path, official_tiny_lm_dir):
  cfg = train_config.load_file(os.path.join(ROOT, "experiments", "configs", "tiny.py"))
  cfg.train.lora.rank = 2
  setup = TrainSetup.from_config(cfg)
  state = create_state(setup, jax.random.key(0), MESH)
  # B starts at zero (merging would be a no-op): give it values.
  state["lora"] = jax.tree.map(lambda x: x + 0.05, state["lora"])
  run_dir = str(tmp_path / "run")
  with Checkpointer(os.path.join(run_dir, CHECKPOINT_DIR), async_save=False) as ckpt:
    ckpt.save(3, split_state(state), force=True)
  run_json.write(run_dir, run_json.describe(cfg, setup.model, MESH, None))
  assert convert_cli.run(run_dir, str(tmp_path / "out"), tokenizer=official_tiny_lm_dir) == 0
  # The command read the run onto a mesh of all 8 devices; the same merge exported from one
  # device gives the same bytes. (The export's merge is compiled per layer, so it may round
  # differently from the op-by-op `lora.merge`: tests/train/test_setup.py::test_lora_merge
  # checks both against the formula.)
  merged = lora.merged_view(state["params"], state["lora"], 2, cfg.train.lora.alpha)
  export_checkpoint(merged, setup.model, str(tmp_path / "direct"))
  _assert_same_tensors(str(tmp_path / "out"), str(tmp_path / "direct"))
  base = SafetensorsReader(str(tmp_path / "out"))["model.layers.0.self_attn.q_proj.weight"]
  assert not np.array_equal(base, np.asarray(state["params"]["model"]["layers"]["self_attn"][
      "q_proj"]["kernel"][0]).T)  # the adapters are in


def test_convert_command_line_and_its_errors(tmp_path, official_tiny_lm_dir):
  def convert(*flags):
    return subprocess.run([sys.executable, "-m", "mimo_jax.convert", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  run_dir = str(tmp_path / "run")
  done = convert(f"--input={official_tiny_lm_dir}", f"--output={run_dir}",
                 "--param_dtype=bfloat16")
  assert done.returncode == 0, done.stderr
  done = convert(f"--input={run_dir}", f"--output={tmp_path / 'out'}", "--dtype=bfloat16",
                 "--shard_size=200KB")
  assert done.returncode == 0, done.stderr
  assert {v for _, v in _header(str(tmp_path / "out")).values()} == {"BF16"}
  assert os.path.exists(tmp_path / "out" / "model.safetensors.index.json")
  assert {k: s for k, (s, _) in _header(str(tmp_path / "out")).items()} == {
      k: s for k, (s, _) in _header(official_tiny_lm_dir).items()}
  # bf16 params stored, bf16 exported: the values are the fixture's rounded once.
  ours = SafetensorsReader(str(tmp_path / "out"))["model.embed_tokens.weight"]
  ref = SafetensorsReader(official_tiny_lm_dir)["model.embed_tokens.weight"]
  np.testing.assert_array_equal(ours, ref.astype(ml_dtypes.bfloat16))
  done = convert(f"--input={tmp_path / 'nowhere'}", f"--output={tmp_path / 'x'}")
  assert done.returncode == 1 and f"--input={tmp_path / 'nowhere'}: no such folder" in done.stderr
  done = convert(f"--input={run_dir}", f"--output={tmp_path / 'x'}", "--shard_size=lots")
  assert done.returncode != 0 and "--shard_size=lots" in done.stderr
  done = convert(f"--input={run_dir}", f"--output={tmp_path / 'x'}",
                 f"--tokenizer={tmp_path / 'nowhere.json'}")
  assert done.returncode == 1 and "nowhere.json" in done.stderr
