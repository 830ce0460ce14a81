"""The resampler against the official tokenizer's (torchaudio) output and a direct float64 sum."""

import numpy as np
import pytest

from mimo_jax.codec import api
from mimo_jax.codec.resample import ROLLOFF, ZERO_CROSSINGS, resample
from tests.codec.common import CLIP, official_codec, official_io


def direct_resample(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
  """The band-limited interpolation formula summed per output sample in float64, with the
  unreduced rates and no polyphase bookkeeping: y(i / new_sr) = sum_n x[n] h(n / orig_sr - i /
  new_sr), h a Hann-windowed sinc cut at min(orig_sr, new_sr) * ROLLOFF / 2 Hz."""
  cutoff_hz = min(orig_sr, new_sr) * ROLLOFF
  n_out = -(-len(wav) * new_sr // orig_sr)
  reach = int(np.ceil(ZERO_CROSSINGS * orig_sr / cutoff_hz)) + 2  # input samples either side
  centre_i = np.arange(n_out) * orig_sr // new_sr
  n_ir = centre_i[:, None] + np.arange(-reach, reach + 1)[None, :]
  t_ir = (n_ir / orig_sr - np.arange(n_out)[:, None] / new_sr) * cutoff_hz
  h_ir = np.where(np.abs(t_ir) < ZERO_CROSSINGS,
                  np.sinc(t_ir) * np.cos(t_ir * np.pi / (2 * ZERO_CROSSINGS)) ** 2, 0.0)
  inside_ir = (n_ir >= 0) & (n_ir < len(wav))
  x_ir = np.where(inside_ir, wav.astype(np.float64)[np.clip(n_ir, 0, len(wav) - 1)], 0.0)
  return np.sum(x_ir * h_ir, axis=1) * cutoff_hz / orig_sr


def test_fixture_clip_matches_the_official_24k_waveform():
  native, sr = api.load_audio(CLIP)
  assert sr == 16000
  ours = resample(native, sr, 24000)
  official = official_io()["wav_24k"]
  assert ours.dtype == np.float32 and ours.shape == official.shape
  # Measured: 1.8e-7 (float32 rounding of the official float32 kernel and convolution).
  np.testing.assert_allclose(ours, official, rtol=0, atol=1e-6)


def test_fixture_clip_at_16k_gives_the_official_codes():
  params, cfg = official_codec()
  native, sr = api.load_audio(CLIP)
  np.testing.assert_array_equal(api.encode(params, cfg, native, sr).T, official_io()["codes"])


@pytest.mark.parametrize("orig_sr, new_sr", [(8000, 24000), (22050, 24000), (44100, 24000),
                                             (48000, 24000), (11025, 24000), (24000, 16000)])
def test_matches_the_direct_formula(orig_sr, new_sr):
  wav = np.random.default_rng(orig_sr).uniform(-1, 1, orig_sr // 20).astype(np.float32)
  ours = resample(wav, orig_sr, new_sr)
  reference = direct_resample(wav, orig_sr, new_sr)
  assert ours.shape == reference.shape
  np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_removes_what_the_new_rate_cannot_hold():
  t = np.arange(4410) / 44100
  wav = (np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 18000 * t)).astype(np.float32)
  out = resample(wav, 44100, 24000)[1000:-1000]  # away from the zero-padded edges
  kept = np.sin(2 * np.pi * 1000 * np.arange(len(out) + 2000)[1000:-1000] / 24000)
  # 18 kHz is above 12 kHz (it would alias to 6 kHz at full amplitude): only the 1 kHz tone
  # survives, up to the stopband leakage of the short Hann-windowed filter (measured 1.9e-3).
  np.testing.assert_allclose(out, kept, rtol=0, atol=5e-3)


def test_same_rate_is_untouched_and_bad_input_is_named():
  wav = np.ones(10, np.float32)
  assert resample(wav, 24000, 24000) is wav
  with pytest.raises(ValueError, match="sample rates must be positive"):
    resample(wav, 0, 24000)
  with pytest.raises(ValueError, match="1-D"):
    resample(np.ones((10, 2), np.float32), 16000, 24000)
  with pytest.raises(ValueError, match="24001 Hz -> 24000 Hz reduces to 24001:24000"):
    resample(wav, 24001, 24000)
  params, cfg = official_codec()
  with pytest.raises(api.AudioError, match="audio 0: resample: 24001 Hz") as refused:
    api.encode(params, cfg, np.zeros(24001, np.float32), 24001)
  assert refused.value.reason == "unsupported_rate"
