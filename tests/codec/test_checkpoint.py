"""Official tokenizer checkpoint layout: names, PyTorch conv layouts, and bit-exact round trips."""

import jax
import numpy as np
import pytest

from mimo_jax.codec import checkpoint
from mimo_jax.codec import config as codec_config
from mimo_jax.convert.names import ConversionError
from mimo_jax.convert.safetensors_io import SafetensorsReader
from tests.codec.common import TOKENIZER_DIR, official_codec, random_codec_params


def test_official_fixture_imports_and_exports_bit_identically(tmp_path):
  params, cfg = official_codec()
  checkpoint.export_codec(params, cfg, str(tmp_path))
  ours, theirs = SafetensorsReader(str(tmp_path)), SafetensorsReader(TOKENIZER_DIR)
  assert set(ours) == set(theirs) and len(theirs) == 147
  for name in set(theirs) - {checkpoint.ISTFT_WINDOW}:
    assert ours[name].shape == theirs[name].shape, name
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
  # The window is not a parameter of ours: we write a float64 Hann rounded once to float32, torch
  # computes it in float32 (differences of 1 ulp-ish, at most 1.8e-7).
  np.testing.assert_allclose(ours[checkpoint.ISTFT_WINDOW], theirs[checkpoint.ISTFT_WINDOW],
                             rtol=0, atol=3e-7)


def test_export_then_import_is_bit_identical(tmp_path):
  cfg = codec_config.tiny()
  params = random_codec_params(checkpoint.codec_specs(cfg), seed=3)
  checkpoint.export_codec(params, cfg, str(tmp_path))
  back, back_cfg = checkpoint.import_codec(str(tmp_path))
  assert back_cfg == cfg
  # The padding rows of the smaller codebooks are not part of the checkpoint: compare real rows.
  for stage, size in enumerate(cfg.codebook_sizes):
    for leaf in ("embed", "embed_avg", "cluster_size"):
      np.testing.assert_array_equal(back["quantizer"][leaf][stage, :size],
                                    params["quantizer"][leaf][stage, :size])
  np.testing.assert_array_equal(back["quantizer"]["inited"], params["quantizer"]["inited"])
  for part in ("encoder", "decoder"):
    jax.tree.map(np.testing.assert_array_equal, back[part], jax.tree.map(np.asarray, params[part]))


# Spec §4.2: official names and PyTorch shapes of the released tokenizer.
FULL_SHAPES = {
    "encoder.conv1.weight": (1280, 128, 3), "encoder.conv1.bias": (1280,),
    "encoder.conv2.weight": (1280, 1280, 3), "encoder.conv2.bias": (1280,),
    "encoder.layers.0.self_attn.q_proj.weight": (1280, 1280),
    "encoder.layers.0.self_attn.q_proj.bias": (1280,),
    "encoder.layers.31.self_attn.k_proj.weight": (1280, 1280),
    "encoder.layers.5.self_attn.v_proj.bias": (1280,),
    "encoder.layers.5.self_attn.out_proj.weight": (1280, 1280),
    "encoder.layers.5.self_attn_layer_norm.weight": (1280,),
    "encoder.layers.5.final_layer_norm.bias": (1280,),
    "encoder.layers.5.fc1.weight": (5120, 1280), "encoder.layers.5.fc1.bias": (5120,),
    "encoder.layers.5.fc2.weight": (1280, 5120),
    "encoder.layer_norm.weight": (1280,),
    "encoder.down_sample_layer.0.weight": (1280, 1280, 2),
    "encoder.down_sample_norm.bias": (1280,),
    "encoder.quantizer.vq.layers.0._codebook.embed": (1024, 1280),
    "encoder.quantizer.vq.layers.1._codebook.embed_avg": (1024, 1280),
    "encoder.quantizer.vq.layers.2._codebook.embed": (128, 1280),
    "encoder.quantizer.vq.layers.19._codebook.cluster_size": (128,),
    "encoder.quantizer.vq.layers.19._codebook.inited": (1,),
    "decoder.dconv1.conv.weight": (1280, 1280, 2), "decoder.dconv1.conv.bias": (1280,),
    "decoder.dconv1.norm.weight": (1280,),
    "decoder.layers.31.self_attn.k_proj.weight": (1280, 1280),
    "decoder.layer_norm.bias": (1280,),
    "decoder.dconv2.conv.weight": (1280, 128, 3), "decoder.dconv2.conv.bias": (128,),
    "decoder.dconv2.norm.weight": (128,),
    "decoder.vocoder.embeddings.weight": (256, 128),
    "decoder.vocoder.layers.15.self_attn.q_proj.weight": (256, 256),
    "decoder.vocoder.layers.0.fc1.weight": (1024, 256),
    "decoder.vocoder.layers.0.fc2.weight": (256, 1024),
    "decoder.vocoder.layer_norm.weight": (256,),
    "decoder.vocoder.head.out.weight": (962, 256), "decoder.vocoder.head.out.bias": (962,),
    "decoder.vocoder.head.istft.window": (960,),
}


def test_full_preset_has_the_official_names_and_shapes():
  shapes = checkpoint.official_shapes(codec_config.full())
  for name, shape in FULL_SHAPES.items():
    assert shapes[name] == shape, name
  # 489 encoder + 80 quantizer + 736 decoder tensors; no bias on k_proj or the down-sampler.
  assert len(shapes) == 1305
  assert not any(n.endswith("k_proj.bias") or n == "encoder.down_sample_layer.0.bias"
                 for n in shapes)
  n_params = sum(int(np.prod(s)) for n, s in shapes.items()
                 if "_codebook" not in n and not n.endswith("istft.window"))
  assert 1.26e9 < n_params < 1.3e9  # spec §1.8: about 1.29 B with the codebooks


def test_tiny_preset_official_shapes_match_the_fixture_file():
  theirs = SafetensorsReader(TOKENIZER_DIR)
  shapes = checkpoint.official_shapes(codec_config.tiny())
  assert shapes == {name: theirs[name].shape for name in theirs}


def test_mismatched_checkpoint_is_named():
  tensors = dict(SafetensorsReader(TOKENIZER_DIR))
  with pytest.raises(ConversionError, match=r"decoder.dconv2.conv.bias: shape \(128,\) in the "
                     r"checkpoint, the model expects \(80,\)"):
    checkpoint.from_official(tensors, codec_config.tiny(n_mels=80))
  del tensors["encoder.quantizer.vq.layers.3._codebook.embed"]
  with pytest.raises(ConversionError, match="layers.3._codebook.embed"):
    checkpoint.from_official(tensors, codec_config.tiny())
