"""The tokenizer encoder (official `AudioEncoder`): log-mel at 100 Hz -> continuous 25 Hz features.

Axis letters: b batch, t time (100, 50 or 25 Hz as named), m mel bins, d model width.

conv stem (k3, then k3 stride 2, GELU) -> bidirectional pre-LN transformer with RoPE -> skip
connection from layer `encoder_skip_layer_id` -> LayerNorm -> zero-pad to a multiple of
`avg_pooler` -> conv k=stride=avg_pooler (no bias) -> GELU -> LayerNorm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mimo_jax.codec.config import CodecConfig
from mimo_jax.codec.layers import (conv1d, gelu, norm_specs, transformer, transformer_specs,
                                   valid_mask)
from mimo_jax.nn.norms import layer_norm
from mimo_jax.nn.params import ParamSpec


def encoder_specs(cfg: CodecConfig) -> dict:
  d, k = cfg.d_model, cfg.kernel_size
  return {
      "conv1": {"conv_kernel": ParamSpec((k, cfg.n_mels, d), (None, None, "embed")),
                "bias": ParamSpec((d,), ("embed",), "zeros")},
      "conv2": {"conv_kernel": ParamSpec((k, d, d), (None, None, "embed")),
                "bias": ParamSpec((d,), ("embed",), "zeros")},
      "layers": transformer_specs(d, cfg.encoder_ffn_dim, cfg.encoder_layers),
      "layer_norm": norm_specs(d),
      # A one-entry list: the official module is nn.Sequential(conv, GELU), so its name is `.0.`.
      "down_sample_layer": [
          {"conv_kernel": ParamSpec((cfg.avg_pooler, d, d), (None, None, "embed"))}],
      "down_sample_norm": norm_specs(d),
  }


def encode_features(params: dict, cfg: CodecConfig, mel_btm: jax.Array,
                    mel_lengths_b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Log-mel [b, t100, m] with valid lengths -> features [b, t25, d] (zero past each length) and
  the 25 Hz lengths."""
  mel_btm = mel_btm * valid_mask(mel_lengths_b, mel_btm.shape[1])
  x_btd = gelu(conv1d(params["conv1"], mel_btm, padding=1))
  # conv2 must see zeros past the end, as it does when the row is encoded alone.
  x_btd = x_btd * valid_mask(mel_lengths_b, x_btd.shape[1])
  x_btd = gelu(conv1d(params["conv2"], x_btd, stride=cfg.stride_size, padding=1))
  lengths50_b = (mel_lengths_b - 1) // cfg.stride_size + 1

  x_btd = transformer(params["layers"], x_btd, lengths50_b, cfg,
                      n_heads=cfg.encoder_attention_heads, causal=cfg.encoder_causal,
                      window=cfg.encoder_attn_window_size, skip_layer_id=cfg.encoder_skip_layer_id)
  x_btd = layer_norm(x_btd, params["layer_norm"]["scale"], params["layer_norm"]["bias"])

  pool = cfg.avg_pooler
  x_btd = x_btd * valid_mask(lengths50_b, x_btd.shape[1])
  x_btd = jnp.pad(x_btd, ((0, 0), (0, -x_btd.shape[1] % pool), (0, 0)))
  x_btd = gelu(conv1d(params["down_sample_layer"][0], x_btd, stride=pool))
  x_btd = layer_norm(x_btd, params["down_sample_norm"]["scale"], params["down_sample_norm"]["bias"])
  lengths25_b = -(-lengths50_b // pool)
  return x_btd * valid_mask(lengths25_b, x_btd.shape[1]), lengths25_b
