"""Audio <-> MiMo-Audio codes with the tokenizer (codec), from the command line.

  python -m mimo_jax.tokenize --codec_ckpt=DIR --input=a.wav --output=codes.npy [--n_q=8]
  python -m mimo_jax.tokenize --codec_ckpt=DIR --decode --input=codes.npy --output=a.wav

DIR is an official tokenizer folder (config.json + model.safetensors). Codes are saved as int32
[frames, n_q] (25 frames per second); decoded audio is written at the tokenizer's rate (24 kHz).
Unreadable or invalid input ends with a one-line error and exit status 1.
"""

import sys

import numpy as np
import soundfile
from absl import app, flags

from mimo_jax.codec import api
from mimo_jax.codec.checkpoint import import_codec
from mimo_jax.config import ConfigError
from mimo_jax.convert.names import ConversionError
from mimo_jax.convert.safetensors_io import CheckpointPathError

_CKPT = flags.DEFINE_string("codec_ckpt", None, "Official tokenizer folder.", required=True)
_INPUT = flags.DEFINE_string("input", None, "Audio file, or codes .npy with --decode.",
                             required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Codes .npy, or an audio file with --decode.",
                              required=True)
_DECODE = flags.DEFINE_bool("decode", False, "Decode codes to audio instead of encoding.")
_N_Q = flags.DEFINE_integer("n_q", api.DEFAULT_N_Q, "RVQ stages to keep when encoding.")


def _load_codes(path: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable .npy file of codes ({e})") from None


def run(argv) -> int:
  del argv
  try:
    params, cfg = import_codec(_CKPT.value)
    if _DECODE.value:
      wav = api.decode(params, cfg, _load_codes(_INPUT.value))
      soundfile.write(_OUTPUT.value, wav, cfg.sampling_rate)
      print(f"{_OUTPUT.value}: {len(wav) / cfg.sampling_rate:.2f} s at {cfg.sampling_rate} Hz")
    else:
      wav, sr = api.load_audio(_INPUT.value)
      codes = api.encode(params, cfg, wav, sr, n_q=_N_Q.value)
      np.save(_OUTPUT.value, codes.astype(np.int32))
      print(f"{_OUTPUT.value}: codes {codes.shape} ({len(codes) / cfg.frame_rate:.2f} s)")
  except (api.AudioError, ConfigError, ConversionError, CheckpointPathError, ValueError,
          OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main(argv):
  sys.exit(run(argv))


if __name__ == "__main__":
  app.run(main)
