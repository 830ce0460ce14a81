"""Stage-2 discriminators (spec §1.6): multi-period (HiFi-GAN) and multi-scale STFT (EnCodec), with
spectral normalisation on every layer.

Axis letters: b batch, s samples, h / w the two image axes of a 2-D conv (time x period for the
MPD, time x frequency for the STFT discriminator), c / o conv input / output channels.

Parameters are ParamSpec trees; the spectral-norm power-iteration vectors live in a separate state
tree of the same structure (`sn`), updated by one iteration per forward (as PyTorch's
`spectral_norm` does in training mode) and never touched by the optimizer.

MPD sub-discriminator (period p): reflect-pad the waveform to a multiple of p, view it as
[s/p, p, 1], four convs (5, 1) stride (3, 1) and one stride 1, LeakyReLU 0.1, then a (3, 1) conv to
one logit channel. STFT sub-discriminator (n_fft): window-normalised STFT (hop n_fft / 4, Hann,
not centred) as [frames, bins, real|imag], a (3, 9) conv, convs (3, 9) stride (1, 2) with time
dilations 1, 2, 4, a (3, 3) conv, LeakyReLU 0.2, then a (3, 3) conv to one logit channel.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mimo_jax.codec.vocoder import hann_window
from mimo_jax.nn.params import ParamSpec, is_spec


@dataclasses.dataclass(frozen=True)
class DiscConfig:
  periods: tuple[int, ...] = (2, 3, 5, 7, 11)
  mpd_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)  # 4 strided convs + 1 stride-1 conv
  stft_ffts: tuple[int, ...] = (2048, 1024, 512)
  stft_filters: int = 32
  stft_dilations: tuple[int, ...] = (1, 2, 4)


def _conv_specs(kh: int, kw: int, c: int, o: int) -> dict:
  return {"kernel": ParamSpec((kh, kw, c, o), (None, None, None, None)),
          "bias": ParamSpec((o,), (None,), "zeros")}


def _mpd_layers(dcfg: DiscConfig) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int],
                                                  tuple[int, int]]]:
  """(kernel, stride, dilation, padding) per conv of one MPD sub-discriminator (post conv last)."""
  n = len(dcfg.mpd_channels)
  return ([((5, 1), (3, 1), (1, 1), (2, 0))] * (n - 1) + [((5, 1), (1, 1), (1, 1), (2, 0))]
          + [((3, 1), (1, 1), (1, 1), (1, 0))])


def _stft_layers(dcfg: DiscConfig):
  return ([((3, 9), (1, 1), (1, 1), (1, 4))]
          + [((3, 9), (1, 2), (d, 1), (d, 4)) for d in dcfg.stft_dilations]
          + [((3, 3), (1, 1), (1, 1), (1, 1))] + [((3, 3), (1, 1), (1, 1), (1, 1))])


def disc_specs(dcfg: DiscConfig) -> dict:
  mpd_widths = (1, *dcfg.mpd_channels, 1)
  f = dcfg.stft_filters
  stft_widths = (2, *([f] * (len(dcfg.stft_dilations) + 2)), 1)
  def convs(layers, widths):
    return [_conv_specs(*k, c, o) for (k, _, _, _), c, o in zip(layers, widths[:-1], widths[1:])]
  return {"mpd": [convs(_mpd_layers(dcfg), mpd_widths) for _ in dcfg.periods],
          "stft": [convs(_stft_layers(dcfg), stft_widths) for _ in dcfg.stft_ffts]}


def sn_specs(dcfg: DiscConfig) -> dict:
  """One power-iteration vector [o] per conv (drawn normal; normalised before use)."""
  return jax.tree.map(lambda s: ParamSpec((s.shape[-1],), (None,)),
                      jax.tree.map(lambda layer: layer["kernel"], disc_specs(dcfg),
                                   is_leaf=lambda x: isinstance(x, dict) and "kernel" in x),
                      is_leaf=is_spec)


def _normalize(v: jax.Array) -> jax.Array:
  return v / (jnp.linalg.norm(v) + 1e-12)


def spectral_normalize(kernel_hwco: jax.Array, u_o: jax.Array) -> tuple[jax.Array, jax.Array]:
  """kernel / sigma_max(kernel as [h*w*c, o]) by one power iteration from u; returns the new u."""
  w_io = kernel_hwco.reshape(-1, kernel_hwco.shape[-1])
  u_o = jax.lax.stop_gradient(u_o)
  v_i = jax.lax.stop_gradient(_normalize(w_io @ _normalize(u_o)))
  u_o = jax.lax.stop_gradient(_normalize(w_io.T @ v_i))
  sigma = jnp.einsum("i,io,o->", v_i, w_io, u_o)
  return kernel_hwco / sigma, u_o


def _conv2d(layer: dict, u_o: jax.Array, x_bhwc: jax.Array, stride, dilation, padding):
  kernel, new_u = spectral_normalize(layer["kernel"], u_o)
  y = jax.lax.conv_general_dilated(
      x_bhwc, kernel, window_strides=stride, padding=[(padding[0], padding[0]),
                                                      (padding[1], padding[1])],
      rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + layer["bias"], new_u


def _run(layers: list, us: list, plan, x_bhwc: jax.Array, slope: float):
  features, new_us = [], []
  for i, (layer, u, (_, stride, dilation, padding)) in enumerate(zip(layers, us, plan)):
    x_bhwc, u = _conv2d(layer, u, x_bhwc, stride, dilation, padding)
    if i < len(layers) - 1:
      x_bhwc = jax.nn.leaky_relu(x_bhwc, slope)
    features.append(x_bhwc)
    new_us.append(u)
  return x_bhwc.reshape(x_bhwc.shape[0], -1), features, new_us


def stft_frames(wav_bs: jax.Array, n_fft: int) -> jax.Array:
  """Window-normalised complex STFT [b, frames, n_fft/2 + 1] (hop n_fft/4, not centred)."""
  hop = n_fft // 4
  t = (wav_bs.shape[1] - n_fft) // hop + 1
  src_tn = np.arange(t)[:, None] * hop + np.arange(n_fft)[None, :]
  window_n = hann_window(n_fft)
  spec = jnp.fft.rfft(wav_bs[:, src_tn] * window_n, axis=-1)
  return spec / float(np.sqrt(np.sum(np.square(window_n))))


def discriminate(params: dict, sn: dict, dcfg: DiscConfig, wav_bs: jax.Array):
  """Waveforms [b, s] -> (logits: one [b, n] per sub-discriminator, features: per
  sub-discriminator the list of layer outputs, new spectral-norm state)."""
  wav_bs = wav_bs.astype(jnp.float32)
  logits, features, new_sn = [], [], {"mpd": [], "stft": []}
  for period, layers, us in zip(dcfg.periods, params["mpd"], sn["mpd"]):
    pad = -wav_bs.shape[1] % period
    x_bs = jnp.pad(wav_bs, ((0, 0), (0, pad)), mode="reflect")
    x_bhwc = x_bs.reshape(x_bs.shape[0], -1, period, 1)
    out, feats, new_us = _run(layers, us, _mpd_layers(dcfg), x_bhwc, 0.1)
    logits.append(out)
    features.append(feats)
    new_sn["mpd"].append(new_us)
  for n_fft, layers, us in zip(dcfg.stft_ffts, params["stft"], sn["stft"]):
    spec_btf = stft_frames(wav_bs, n_fft)
    x_bhwc = jnp.stack([spec_btf.real, spec_btf.imag], axis=-1)
    out, feats, new_us = _run(layers, us, _stft_layers(dcfg), x_bhwc, 0.2)
    logits.append(out)
    features.append(feats)
    new_sn["stft"].append(new_us)
  return logits, features, new_sn
