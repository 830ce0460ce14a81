"""Mel front end: the official fixture mel and librosa, in the linear domain; segmented rows."""

import jax.numpy as jnp
import librosa
import numpy as np

from mimo_jax.codec import config as codec_config
from mimo_jax.codec import mel
from tests.codec.common import official_io

CFG = codec_config.tiny()


def _mel(wav_s: np.ndarray) -> np.ndarray:
  (row, frames), = mel.frame_rows(CFG, wav_s, max_frames=10**9)
  return np.asarray(mel.mel_magnitude(CFG, jnp.asarray(row[None]), jnp.array([frames]))[0])


def test_matches_the_official_mel_in_the_linear_domain():
  io = official_io()
  ours_tm = _mel(io["wav_24k"])
  theirs_tm = np.exp(io["mel"].T.astype(np.float64))
  assert ours_tm.shape == theirs_tm.shape == (401, 128)
  # The official float32 STFT rounds at ~7e-6 per bin (README); that is the absolute floor here,
  # everything else agrees to 1e-5 relative (values reach 58).
  np.testing.assert_allclose(ours_tm, theirs_tm, rtol=1e-5, atol=2e-5)
  # In the log domain only the quietest bins move (README: ~1e-2 between float32 STFTs).
  (row, frames), = mel.frame_rows(CFG, io["wav_24k"], max_frames=10**9)
  log_ours = np.asarray(mel.log_mel(CFG, jnp.asarray(row[None]), jnp.array([frames]))[0])
  loud = theirs_tm > 1e-2
  np.testing.assert_allclose(log_ours[loud], io["mel"].T[loud], rtol=0, atol=1e-3)


def test_matches_librosa_on_real_speech():
  wav_s = official_io()["wav_24k"]
  ref_tm = librosa.feature.melspectrogram(
      y=wav_s.astype(np.float64), sr=24000, n_fft=960, hop_length=240, win_length=960,
      window="hann", center=True, pad_mode="reflect", power=1.0, n_mels=128, htk=True,
      norm=None).T
  np.testing.assert_allclose(_mel(wav_s), ref_tm, rtol=1e-5, atol=1e-5)


def test_segment_rows_give_the_frames_of_the_whole_signal():
  wav_s = official_io()["wav_24k"][:50_000]
  whole_tm = _mel(wav_s)
  rows = mel.frame_rows(CFG, wav_s, max_frames=64)
  assert [n for _, n in rows] == [64, 64, 64, 17] and len(whole_tm) == 209
  width = mel.row_samples(CFG, 64)
  batch_bs = np.stack([np.pad(r, (0, width - len(r))) for r, _ in rows])
  batch_btm = np.asarray(mel.mel_magnitude(CFG, jnp.asarray(batch_bs),
                                           jnp.array([n for _, n in rows])))
  joined_tm = np.concatenate([batch_btm[i, :n] for i, (_, n) in enumerate(rows)])
  np.testing.assert_allclose(joined_tm, whole_tm, rtol=1e-6, atol=1e-6)
  assert not batch_btm[3, 17:].any()


def test_frame_count_follows_the_centred_stft():
  for n in (481, 24000, 24239, 24240):
    assert mel.num_frames(CFG, n) == len(_mel(np.random.default_rng(0).standard_normal(n)))
  assert mel.num_frames(CFG, 24000) == 101
