"""encode / decode: shapes and rates, batches, buckets, segmentation and bad audio."""

import numpy as np
import pytest
import soundfile

from mimo_jax.codec import api, mel
from tests.codec.common import CLIP, official_codec, official_io


def test_encode_reproduces_the_official_codes_from_the_24k_waveform():
  params, cfg = official_codec()
  io = official_io()
  codes_tq = api.encode(params, cfg, io["wav_24k"], 24000)
  np.testing.assert_array_equal(codes_tq.T, io["codes"])


def test_decode_reproduces_the_official_waveform():
  params, cfg = official_codec()
  io = official_io()
  wav_s = api.decode(params, cfg, io["codes"].T)
  # Measured max |difference| 3.6e-7 (experiments/results/official_parity.md).
  np.testing.assert_allclose(wav_s, io["wav_decoded"], rtol=0, atol=2e-6)


def test_shapes_and_rates():
  params, cfg = official_codec()
  wav_s = official_io()["wav_24k"]
  # The centred STFT has floor(n / 240) + 1 frames, so 1 s (24000 samples) is 101 mel frames, 51 at
  # 50 Hz and 26 codes: the official code gives 25 codes per second plus one (4 s -> 101 codes).
  lengths = [24000, 24000 + 959, 24000 + 960, 30001]
  codes = api.encode_batch(params, cfg, [wav_s[:n] for n in lengths], 24000, n_q=3)
  assert [c.shape for c in codes] == [(26, 3), (26, 3), (27, 3), (32, 3)]
  assert [cfg.mel_to_code_length(mel.num_frames(cfg, n)) for n in lengths] == [26, 26, 27, 32]
  wavs = api.decode_batch(params, cfg, [codes[0], codes[3][:7], codes[3][:, :1]])
  assert [len(w) for w in wavs] == [26 * 960, 7 * 960, 32 * 960]


def test_batch_results_equal_single_results():
  params, cfg = official_codec()
  wav_s = official_io()["wav_24k"]
  items = [wav_s[:30001], wav_s]
  batch = api.encode_batch(params, cfg, items, 24000)
  for item, codes in zip(items, batch):
    np.testing.assert_array_equal(codes, api.encode(params, cfg, item, 24000))
  wavs = api.decode_batch(params, cfg, batch)
  for codes, wav in zip(batch, wavs):
    np.testing.assert_allclose(wav, api.decode(params, cfg, codes), rtol=0, atol=1e-5)


def test_lengths_in_one_bucket_compile_once():
  params, cfg = official_codec()
  wav_s = official_io()["wav_24k"]
  api.encode(params, cfg, wav_s[:40000], 24000)
  before = api._encode_rows._cache_size()
  for n in (40100, 40500, 41000, 42000):
    api.encode(params, cfg, wav_s[:n], 24000)
  assert api._encode_rows._cache_size() == before
  assert [api.bucket(n) for n in (1, 16, 17, 100, 129, 1500, 6000)] == [
      16, 16, 20, 112, 160, 1536, 6144]


def test_batches_hold_rows_of_one_length_bucket():
  """A 60 s clip's 6000-frame row and its 1-frame remainder run as two batches, not as two
  6144-frame rows; rows of one bucket share batches of at most MAX_BATCH."""
  assert api._batches_by_bucket([6000, 1]) == [[1], [0]]
  lengths = [100] * (api.MAX_BATCH + 1) + [20, 6000, 101]
  batches = api._batches_by_bucket(lengths)
  assert sorted(i for ids in batches for i in ids) == list(range(len(lengths)))
  assert all(len(ids) <= api.MAX_BATCH and len({api.bucket(lengths[i]) for i in ids}) == 1
             for ids in batches)


def test_long_audio_is_encoded_in_independent_segments(monkeypatch):
  """Segments of SEGMENT_SECONDS of mel frames, taken from the whole-file mel, each encoded alone
  (positions restart), codes concatenated: what the official encode_batch does with 60 s."""
  params, cfg = official_codec()
  wav_s = official_io()["wav_24k"][:60000]  # 251 mel frames
  whole = api.encode(params, cfg, wav_s, 24000)
  monkeypatch.setattr(api, "SEGMENT_SECONDS", 1)  # 100-frame segments: 100 + 100 + 51 frames
  segmented = api.encode(params, cfg, wav_s, 24000)
  assert len(whole) == 63 and len(segmented) == 25 + 25 + 13
  rows = mel.frame_rows(cfg, wav_s, 100)
  expected = np.concatenate([
      api._encode_rows(params, cfg, 8, row[None], np.array([n]))[0][0] for row, n in rows])
  np.testing.assert_array_equal(segmented, expected)
  # Decoding 60 s chunks: 1 s chunks of 25 codes.
  wav = api.decode(params, cfg, segmented)
  assert len(wav) == 63 * 960
  np.testing.assert_allclose(wav[:25 * 960], api.decode(params, cfg, segmented[:25]), atol=1e-5)


def test_repairs_stereo_other_rates_int_pcm_and_silence(tmp_path):
  params, cfg = official_codec()
  wav_s = official_io()["wav_24k"][:24000]
  mono = api.encode(params, cfg, wav_s, 24000)
  stereo = np.stack([wav_s, wav_s], axis=1)
  np.testing.assert_array_equal(api.encode(params, cfg, stereo, 24000), mono)
  pcm = (wav_s * 20000).astype(np.int16)
  assert api.prepare_audio(pcm, 24000, cfg).dtype == np.float32
  assert api.encode(params, cfg, np.zeros(8000, np.float32), 8000).shape == (26, 8)  # 1 s, 8 kHz
  native, sr = api.load_audio(CLIP)
  assert sr == 16000 and api.encode(params, cfg, native, sr).shape == (101, 8)
  path = tmp_path / "stereo.wav"  # float samples: the file holds exactly these values
  soundfile.write(path, stereo, 24000, subtype="FLOAT")
  wav, sr = api.load_audio(str(path))
  assert wav.shape == (24000, 2)
  np.testing.assert_array_equal(api.encode(params, cfg, wav, sr), mono)


@pytest.mark.parametrize("wav, sr, message", [
    (np.zeros(0, np.float32), 24000, "empty audio"),
    (np.array([0.0, np.nan] * 600, np.float32), 24000, "600 non-finite"),
    (np.array([0.0, np.inf] * 600, np.float32), 24000, "600 non-finite"),
    (np.zeros(100, np.float32), 24000, "at least 481"),
    (np.zeros((2, 24000), np.float32), 24000, "must be \\[samples, channels\\]"),
    (np.zeros((2, 2, 2), np.float32), 24000, "expected \\[samples\\]"),
    (np.zeros(24000, np.float32), 0, "sample rate"),
    (np.array(["a"] * 1000), 24000, "dtype"),
])
def test_bad_audio_is_refused_with_a_reason(wav, sr, message):
  params, cfg = official_codec()
  with pytest.raises(api.AudioError, match=message):
    api.encode(params, cfg, wav, sr)


def test_unreadable_files_are_named(tmp_path):
  with pytest.raises(api.AudioError, match="no such audio file"):
    api.load_audio(str(tmp_path / "missing.wav"))
  bad = tmp_path / "corrupt.wav"
  bad.write_bytes(b"RIFF\x00\x00not really a wave file")
  with pytest.raises(api.AudioError, match="not a readable audio file"):
    api.load_audio(str(bad))


def test_bad_codes_are_named():
  params, cfg = official_codec()
  with pytest.raises(ValueError, match="outside its codebook of 128"):
    api.decode(params, cfg, np.full((4, 3), 200))
  with pytest.raises(ValueError, match="expected codes"):
    api.decode(params, cfg, np.zeros((4, 9), np.int32))
  with pytest.raises(ValueError, match="integers"):
    api.decode(params, cfg, np.zeros((4, 8), np.float32))
