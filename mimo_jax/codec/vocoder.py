"""The vocoder (official `TransformerVocos` + `ISTFTHead`): coarse mel at 100 Hz -> 24 kHz waveform.

Axis letters: b batch, t frames (100 Hz), m mel bins, d vocoder width, f frequency bins,
n samples of one frame (n_fft), s waveform samples, j hop-sized pieces of one frame.

Linear embedding -> pre-LN transformer with a sliding window (40 left / 10 right frames) ->
LayerNorm -> Linear to n_fft + 2 = [log-magnitude | phase] -> inverse real FFT -> Hann window -> overlap-add
with "same" padding, divided by the summed squared window.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import librosa
import numpy as np

from mimo_jax.codec.config import CodecConfig
from mimo_jax.codec.layers import dense, norm_specs, transformer, transformer_specs, valid_mask
from mimo_jax.nn.norms import layer_norm
from mimo_jax.nn.params import ParamSpec

# The official head clips exp(log-magnitude) here to keep the output bounded.
MAX_MAGNITUDE = 100.0


def vocoder_specs(cfg: CodecConfig) -> dict:
  d = cfg.vocoder_dim
  return {
      "embeddings": {"kernel": ParamSpec((cfg.n_mels, d), (None, "embed"))},
      "layers": transformer_specs(d, cfg.vocoder_intermediate_dim, cfg.vocoder_num_layers),
      "layer_norm": norm_specs(d),
      "head": {"out": {"kernel": ParamSpec((d, cfg.nfft + 2), ("embed", None)),
                       "bias": ParamSpec((cfg.nfft + 2,), (None,), "zeros")}},
  }


def hann_window(n: int) -> np.ndarray:
  """Periodic Hann (torch.hann_window's default), float32."""
  return librosa.filters.get_window("hann", n, fftbins=True).astype(np.float32)


def overlap_add(frames_btn: jax.Array, hop: int) -> jax.Array:
  """Sum of frames placed every `hop` samples: [b, t, n] -> [b, (t - 1) * hop + n]."""
  b, t, n = frames_btn.shape
  pieces = n // hop  # the config guarantees n_fft is a multiple of hop_length
  chunks_btjh = frames_btn.reshape(b, t, pieces, hop)
  out_bth = sum(jnp.pad(chunks_btjh[:, :, j], ((0, 0), (j, pieces - 1 - j), (0, 0)))
                for j in range(pieces))
  return out_bth.reshape(b, (t + pieces - 1) * hop)


def istft_head(params: dict, cfg: CodecConfig, x_btd: jax.Array,
               lengths_b: jax.Array) -> jax.Array:
  """Frames [b, t, d] -> waveform [b, t * hop] ("same" padding); zero past lengths_b * hop."""
  spec_btf = dense(params["out"], x_btd).astype(jnp.float32)
  log_mag_btf, phase_btf = jnp.split(spec_btf, 2, axis=-1)
  mag_btf = jnp.minimum(jnp.exp(log_mag_btf), MAX_MAGNITUDE)
  frame_mask_bt1 = valid_mask(lengths_b, x_btd.shape[1])
  spectrum_btf = (mag_btf * frame_mask_bt1) * (jnp.cos(phase_btf) + 1j * jnp.sin(phase_btf))
  window_n = jnp.asarray(hann_window(cfg.nfft))
  frames_btn = jnp.fft.irfft(spectrum_btf, n=cfg.nfft, axis=-1) * window_n
  # The envelope counts only each row's own frames, so a padded row ends exactly as it would
  # alone (the official code asserts the envelope is non-zero inside the signal).
  envelope_btn = frame_mask_bt1 * jnp.square(window_n)
  pad = (cfg.nfft - cfg.hop_length) // 2
  t = x_btd.shape[1]
  wav_bs = overlap_add(frames_btn, cfg.hop_length)[:, pad:pad + t * cfg.hop_length]
  envelope_bs = overlap_add(envelope_btn, cfg.hop_length)[:, pad:pad + t * cfg.hop_length]
  # The tail of a padded row's last frames spills past its end: cut it, as its own trim would.
  inside_bs = jnp.arange(t * cfg.hop_length)[None, :] < (lengths_b * cfg.hop_length)[:, None]
  return jnp.where(inside_bs, wav_bs / jnp.where(inside_bs, envelope_bs, 1.0), 0.0)


def vocode(params: dict, cfg: CodecConfig, mel_btm: jax.Array, lengths_b: jax.Array) -> jax.Array:
  """Coarse mel [b, t, m] -> waveform [b, t * hop_length] (zero past each row's length)."""
  x_btd = dense(params["embeddings"], mel_btm * valid_mask(lengths_b, mel_btm.shape[1]))
  # Windows are per sequence; positions restart per row (the official running index over a packed
  # batch differs only by an offset, which RoPE attention does not see).
  x_btd = transformer(params["layers"], x_btd, lengths_b, cfg,
                      n_heads=cfg.vocoder_attention_heads, causal=False,
                      window=cfg.vocoder_attn_window_size)
  x_btd = layer_norm(x_btd, params["layer_norm"]["scale"], params["layer_norm"]["bias"])
  return istft_head(params["head"], cfg, x_btd, lengths_b)
