"""`python -m mimo_jax.tokenize`: encode a file, decode the codes, and one-line errors."""

import numpy as np
import pytest
import soundfile

from mimo_jax import tokenize
from tests.codec.common import CLIP, TOKENIZER_DIR, official_io


def test_encode_then_decode_files(tmp_path):
  # clip.wav is 16 kHz: the CLI resamples it (librosa), so the codes are not the fixture's, which
  # start from torchaudio's resampling; their shape and the decoded length are fixed.
  codes_path, wav_path = str(tmp_path / "codes.npy"), str(tmp_path / "out.wav")
  assert tokenize.run(TOKENIZER_DIR, CLIP, codes_path, n_q=4) == 0
  codes = np.load(codes_path)
  assert codes.shape == (101, 4) and codes.dtype == np.int32
  np.save(codes_path, official_io()["codes"].T)
  assert tokenize.run(TOKENIZER_DIR, codes_path, wav_path, decode=True) == 0
  wav, sr = soundfile.read(wav_path, dtype="float32")
  assert sr == 24000 and wav.shape == (101 * 960,)


@pytest.mark.parametrize("make_input, decode, message", [
    (lambda d: str(d / "missing.wav"), False, "no such audio file"),
    (lambda d: (d / "bad.wav").write_bytes(b"RIFFjunk") and str(d / "bad.wav"), False,
     "not a readable audio file"),
    (lambda d: (d / "bad.npy").write_bytes(b"junk") and str(d / "bad.npy"), True,
     "not a readable .npy"),
])
def test_bad_input_gives_a_one_line_error(tmp_path, capsys, make_input, decode, message):
  assert tokenize.run(TOKENIZER_DIR, make_input(tmp_path), str(tmp_path / "out"),
                      decode=decode) == 1
  assert message in capsys.readouterr().err


def test_bad_checkpoint_gives_a_one_line_error(tmp_path, capsys):
  assert tokenize.run(str(tmp_path), CLIP, str(tmp_path / "c.npy")) == 1
  assert "error: config: no config.json" in capsys.readouterr().err
