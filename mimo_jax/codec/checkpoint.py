"""The whole tokenizer's parameter tree and its official checkpoint folder (config.json +
model.safetensors, loadable by the official `MiMoAudioTokenizer.from_pretrained`).

Tree: {"encoder": ..., "decoder": ..., "quantizer": ...}. Encoder and decoder map to official names
by `convert.names` (their trees mirror the PyTorch modules); the quantizer's stacked codebooks are
split into the official per-stage `encoder.quantizer.vq.layers.{i}._codebook.*` tensors.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from mimo_jax.codec import rvq
from mimo_jax.codec.config import CodecConfig, load_codec_config, save_codec_config
from mimo_jax.codec.decoder import decoder_specs
from mimo_jax.codec.encoder import encoder_specs
from mimo_jax.codec.vocoder import hann_window
from mimo_jax.convert import names
from mimo_jax.convert.safetensors_io import SafetensorsReader, save_safetensors

# A persistent buffer of the official ISTFT module: written for the official loader, never read.
ISTFT_WINDOW = "decoder.vocoder.head.istft.window"


def codec_specs(cfg: CodecConfig) -> dict:
  return {"encoder": encoder_specs(cfg), "decoder": decoder_specs(cfg),
          "quantizer": rvq.quantizer_specs(cfg)}


def to_official(params: dict, cfg: CodecConfig) -> dict[str, Any]:
  """Official name -> tensor in PyTorch layout, each read from `params` only when written."""
  tensors: dict[str, Any] = names.to_official({"encoder": params["encoder"],
                                               "decoder": params["decoder"]})
  tensors.update(rvq.to_official(params["quantizer"], cfg))
  tensors[ISTFT_WINDOW] = hann_window(cfg.nfft)
  return tensors


def official_shapes(cfg: CodecConfig) -> dict[str, tuple[int, ...]]:
  """Official name -> PyTorch shape of every tensor, computed from the specs (nothing allocated)."""
  return {name: tuple(t.shape) for name, t in to_official(codec_specs(cfg), cfg).items()}


def from_official(tensors, cfg: CodecConfig, dtype: Any = jnp.float32) -> dict:
  specs = codec_specs(cfg)
  params = names.from_official(tensors, {"encoder": specs["encoder"],
                                         "decoder": specs["decoder"]}, dtype=dtype)
  # The codebooks stay float32 whatever the parameter dtype: distances are taken in float32.
  params["quantizer"] = rvq.from_official(tensors, cfg)
  return params


def export_codec(params: dict, cfg: CodecConfig, out_dir: str, dtype: str = "float32") -> list[str]:
  """Writes the official tokenizer folder, streaming one tensor at a time from `params` (host or
  device arrays, sharded over any processes)."""
  files = save_safetensors(to_official(params, cfg), out_dir, dtype=dtype)
  save_codec_config(cfg, out_dir)
  return ["config.json", *files]


def import_codec(path: str, cfg: CodecConfig | None = None) -> tuple[dict, CodecConfig]:
  """Reads an official tokenizer folder; without cfg its config.json is read."""
  cfg = load_codec_config(path) if cfg is None else cfg
  return from_official(SafetensorsReader(path), cfg), cfg
