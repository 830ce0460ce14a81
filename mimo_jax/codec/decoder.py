"""The tokenizer decoder (official `AudioDecoder`): quantised 25 Hz features -> coarse mel ->
waveform.

Axis letters: b batch, t time (25, 50 or 100 Hz as named), d model width, m mel bins.

dconv1 (transposed conv k=stride=avg_pooler, GroupNorm) -> causal pre-LN transformer with RoPE ->
LayerNorm -> dconv2 (transposed conv k3 stride 2 to n_mels, GroupNorm, trim k - stride steps on the
right) -> vocoder.
"""

from __future__ import annotations

import jax

from mimo_jax.codec.config import CodecConfig
from mimo_jax.codec.layers import (conv_transpose1d, group_norm, norm_specs, transformer,
                                   transformer_specs, valid_mask)
from mimo_jax.codec.vocoder import vocode, vocoder_specs
from mimo_jax.nn.norms import layer_norm
from mimo_jax.nn.params import ParamSpec


def _tconv_specs(k: int, c: int, o: int, out_axis: str | None) -> dict:
  return {"conv": {"tconv_kernel": ParamSpec((k, c, o), (None, "embed", out_axis)),
                   "bias": ParamSpec((o,), (out_axis,), "zeros")},
          "norm": norm_specs(o, out_axis)}


def decoder_specs(cfg: CodecConfig) -> dict:
  d = cfg.d_model
  return {
      "dconv1": _tconv_specs(cfg.avg_pooler, d, d, None),
      "layers": transformer_specs(d, cfg.decoder_ffn_dim, cfg.decoder_layers),
      "layer_norm": norm_specs(d),
      "dconv2": _tconv_specs(cfg.decoder_kernel_size, d, cfg.n_mels, None),
      "vocoder": vocoder_specs(cfg),
  }


def _causal_tconv(params: dict, x_btc: jax.Array, lengths_b: jax.Array,
                  stride: int) -> tuple[jax.Array, jax.Array]:
  """Official `CausalConvTranspose1d`: the GroupNorm statistics cover the full conv output of each
  row, *including* the k - stride steps that are then trimmed on the right."""
  x_btc = x_btc * valid_mask(lengths_b, x_btc.shape[1])
  y_bto = conv_transpose1d(params["conv"], x_btc, stride=stride)
  k = params["conv"]["tconv_kernel"].shape[0]
  y_bto = group_norm(params["norm"], y_bto, (lengths_b - 1) * stride + k)
  trim = k - stride
  y_bto = y_bto[:, :y_bto.shape[1] - trim]
  out_lengths_b = lengths_b * stride
  return y_bto * valid_mask(out_lengths_b, y_bto.shape[1]), out_lengths_b


def decode_mel(params: dict, cfg: CodecConfig, z_btd: jax.Array,
               lengths_b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Quantised features [b, t25, d] -> coarse mel [b, t100, m] and its lengths."""
  x_btd, lengths50_b = _causal_tconv(params["dconv1"], z_btd, lengths_b, cfg.avg_pooler)
  x_btd = transformer(params["layers"], x_btd, lengths50_b, cfg,
                      n_heads=cfg.decoder_attention_heads, causal=cfg.decoder_causal,
                      window=cfg.decoder_attn_window_size)
  x_btd = layer_norm(x_btd, params["layer_norm"]["scale"], params["layer_norm"]["bias"])
  return _causal_tconv(params["dconv2"], x_btd, lengths50_b, cfg.decoder_stride_size)


def decode_wav(params: dict, cfg: CodecConfig, z_btd: jax.Array,
               lengths_b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Quantised features [b, t25, d] -> waveform [b, t25 * samples_per_frame] and its lengths."""
  mel_btm, mel_lengths_b = decode_mel(params, cfg, z_btd, lengths_b)
  return vocode(params["vocoder"], cfg, mel_btm, mel_lengths_b), mel_lengths_b * cfg.hop_length
