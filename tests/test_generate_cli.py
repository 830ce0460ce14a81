"""`python -m mimo_jax.generate`: tasks through the CLI's run(), its flags, one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from mimo_jax import generate, inference
from tests.codec.common import CLIP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mimo(official_tiny_lm_dir, official_tiny_codec_dir):
  return inference.MimoAudio.load(official_tiny_lm_dir, official_tiny_codec_dir, dtype="float32")


def test_tts_writes_the_answer_audio(mimo, tmp_path, capsys, official_tiny_lm_dir,
                                     official_tiny_codec_dir):
  out = str(tmp_path / "out.wav")
  status = generate.run("tts", ckpt=official_tiny_lm_dir, codec_ckpt=official_tiny_codec_dir,
                        text="hello", output=out, max_new=16, seed=3, mimo=mimo)
  assert status == 0
  answer = mimo.generate([generate.prompt(mimo, "tts", "hello", None)], max_new=16, seed=3)[0]
  wav, sr = soundfile.read(out, dtype="float32")
  assert sr == 24000 and wav.shape == answer.wav.shape
  np.testing.assert_allclose(wav, answer.wav, atol=1 / 2 ** 15)  # 16-bit PCM file
  printed = capsys.readouterr().out
  assert printed.startswith(answer.text + "\n") and printed.splitlines()[-1].startswith(out)


def test_asr_prints_the_text(mimo, capsys, official_tiny_lm_dir, official_tiny_codec_dir):
  status = generate.run("asr", ckpt=official_tiny_lm_dir, codec_ckpt=official_tiny_codec_dir,
                        audio=CLIP, max_new=6, mimo=mimo)
  assert status == 0
  wav, sr = soundfile.read(CLIP, dtype="float32")
  assert capsys.readouterr().out.rstrip("\n") == mimo.asr(wav, sr, max_new=6)


@pytest.mark.parametrize("task, kwargs, message", [
    ("tts", {}, "--text: required by --task=tts"),
    ("tts", {"text": "hi"}, "--output: required"),
    ("asr", {"audio": "/nonexistent.wav"}, "no such audio file"),
])
def test_bad_input_is_a_one_line_error(mimo, capsys, task, kwargs, message):
  status = generate.run(task, ckpt="unused", codec_ckpt="unused", mimo=mimo, **kwargs)
  err = capsys.readouterr().err
  assert status == 1 and message in err and len(err.strip().splitlines()) == 1


def test_command_line_flags(tmp_path):
  """The module runs as a command: a missing checkpoint folder is a named one-line error."""
  proc = subprocess.run(
      [sys.executable, "-m", "mimo_jax.generate", "--task=text_dialogue", "--text=hi",
       f"--ckpt={tmp_path}", f"--codec_ckpt={tmp_path}"],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --ckpt=")
