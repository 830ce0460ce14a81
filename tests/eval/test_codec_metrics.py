"""Codec reconstruction metrics: known values, invariances, the JAX training loss, the command."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from mimo_jax.codec import config as codec_config
from mimo_jax.codec import losses
from mimo_jax.data import corpus
from mimo_jax.eval import codec as codec_eval
from mimo_jax.eval import codec_metrics, judges
from mimo_jax.train import run_dir
from tests.codec.common import TOKENIZER_DIR

SR = 24000


@pytest.fixture(scope="module")
def speech():
  voice = corpus.VOICES[0]
  return corpus.synthesize("The quick brown fox jumps over the lazy dog.", voice, SR)


def test_si_sdr_known_values(speech):
  rng = np.random.default_rng(0)
  noise = rng.standard_normal(len(speech)).astype(np.float32)
  noise *= np.sqrt(np.mean((speech - speech.mean()) ** 2) / np.mean(noise ** 2)) * 0.1  # 20 dB
  value = codec_metrics.si_sdr(speech, speech + noise)
  assert abs(value - 20.0) < 0.2
  # Scale invariance, and a perfect estimate hits the 1e-12 floor (~ +100 dB and more).
  np.testing.assert_allclose(codec_metrics.si_sdr(speech, 3 * (speech + noise)), value,
                             rtol=1e-9)
  assert codec_metrics.si_sdr(speech, speech) > 100


def test_mel_distance_equals_the_training_loss(speech):
  estimate = 0.5 * speech + 0.01 * np.sin(np.arange(len(speech)) * 0.3).astype(np.float32)
  value = codec_metrics.mel_distance(speech, estimate, SR)
  loss = losses.multiscale_mel_loss(codec_config.tiny(), jnp.asarray(estimate[None]),
                                    jnp.asarray(speech[None]), jnp.array([len(speech)]))
  np.testing.assert_allclose(value, float(loss), rtol=1e-4)
  assert codec_metrics.mel_distance(speech, speech, SR) == 0.0


def test_stoi_and_pesq_rank_clean_above_noisy(speech):
  noisy = speech + 0.05 * np.random.default_rng(1).standard_normal(len(speech)).astype(
      np.float32)
  clean, degraded = (codec_metrics.all_metrics(speech, x, SR) for x in (speech, noisy))
  assert clean["stoi"] > 0.99 and degraded["stoi"] < clean["stoi"]
  assert clean["pesq_wb"] > 4.5 and clean["pesq_nb"] > 4.4  # PESQ's ceilings: 4.64 / 4.55
  assert degraded["pesq_wb"] < clean["pesq_wb"] - 1 and degraded["pesq_nb"] < clean["pesq_nb"]
  assert clean["notes"] == [] and degraded["notes"] == []
  # A shorter estimate is zero-padded to the reference; silence is refused by PESQ with a reason.
  short = codec_metrics.all_metrics(speech, speech[: len(speech) // 2], SR)
  assert short["stoi"] < clean["stoi"]
  silent = codec_metrics.all_metrics(speech, np.zeros(100, np.float32), SR)
  assert np.isnan(silent["pesq_wb"]) and any("pesq_wb" in n for n in silent["notes"])
  summary = codec_metrics.summarize([clean, silent])
  assert summary["pesq_wb_count"] == 1 and summary["pesq_wb"] == clean["pesq_wb"]
  assert summary["stoi_count"] == 2


def test_evaluate_a_checkpoint_on_a_folder(speech, tmp_path):
  soundfile.write(tmp_path / "a.wav", speech, SR)
  soundfile.write(tmp_path / "b.flac", speech[:SR], SR)
  (tmp_path / "broken.wav").write_text("not audio")
  params, cfg = run_dir.load_codec(TOKENIZER_DIR)
  paths = codec_eval.audio_files(str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["a.wav", "b.flac", "broken.wav"]
  result = codec_eval.evaluate(params, cfg, paths, n_q=8)
  assert [os.path.basename(r["file"]) for r in result["files"]] == ["a.wav", "b.flac"]
  assert [os.path.basename(s["file"]) for s in result["skipped"]] == ["broken.wav"]
  for row in result["files"]:
    assert all(np.isfinite(row[k]) for k in ("mel_distance", "stoi", "si_sdr"))
  assert result["mean"]["stoi_count"] == 2


def test_metrics_are_ideal_on_identical_audio_and_fall_as_noise_grows(speech):
  """Identical audio: STOI 1, PESQ at its ceilings (4.64 WB / 4.55 NB), mel distance 0, SI-SDR at
  its floor-limited maximum, SIM 1. Then white noise at 40, 25, 10 and 0 dB SNR: every metric
  gets strictly worse at each step."""
  rng = np.random.default_rng(0)
  noise = rng.standard_normal(len(speech)).astype(np.float32)
  noise *= np.sqrt(np.mean(speech ** 2) / np.mean(noise ** 2))  # 0 dB
  ideal = codec_metrics.all_metrics(speech, speech, SR)
  assert ideal["stoi"] == pytest.approx(1.0, abs=1e-6)
  assert ideal["pesq_wb"] == pytest.approx(4.64, abs=0.01)
  assert ideal["pesq_nb"] == pytest.approx(4.55, abs=0.01)
  assert ideal["mel_distance"] == 0.0 and ideal["si_sdr"] > 100
  assert judges.speaker_similarity(speech, SR, speech, SR) == pytest.approx(1.0, abs=1e-5)
  rows = [ideal]
  for snr_db in (40, 25, 10, 0):
    noisy = speech + noise * 10 ** (-snr_db / 20)
    rows.append({**codec_metrics.all_metrics(speech, noisy, SR),
                 "sim": judges.speaker_similarity(noisy, SR, speech, SR)})
  rows[0]["sim"] = 1.0
  for higher_is_better in ("stoi", "pesq_wb", "pesq_nb", "si_sdr", "sim"):
    values = [r[higher_is_better] for r in rows]
    assert all(a > b for a, b in zip(values, values[1:])), (higher_is_better, values)
  distances = [r["mel_distance"] for r in rows]
  assert all(a < b for a, b in zip(distances, distances[1:])), distances
