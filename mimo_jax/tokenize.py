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
from mimo_jax.config import ConfigError
from mimo_jax.convert.names import ConversionError
from mimo_jax.convert.safetensors_io import CheckpointPathError
from mimo_jax.train import run_dir


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  flags.DEFINE_string("codec_ckpt", None, "Official tokenizer folder or codec run.",
                      required=True)
  flags.DEFINE_string("input", None, "Audio file, or codes .npy with --decode.", required=True)
  flags.DEFINE_string("output", None, "Codes .npy, or an audio file with --decode.",
                      required=True)
  flags.DEFINE_bool("decode", False, "Decode codes to audio instead of encoding.")
  flags.DEFINE_integer("n_q", api.DEFAULT_N_Q, "RVQ stages to keep when encoding.")


def _load_codes(path: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable .npy file of codes ({e})") from None


def run(codec_ckpt: str, input_path: str, output: str, decode: bool = False,
        n_q: int = api.DEFAULT_N_Q) -> int:
  """Encodes an audio file to codes (or decodes codes to audio); returns the exit status."""
  try:
    params, cfg = run_dir.load_codec(codec_ckpt)
    if decode:
      wav = api.decode(params, cfg, _load_codes(input_path))
      soundfile.write(output, wav, cfg.sampling_rate)
      print(f"{output}: {len(wav) / cfg.sampling_rate:.2f} s at {cfg.sampling_rate} Hz")
    else:
      wav, sr = api.load_audio(input_path)
      codes = api.encode(params, cfg, wav, sr, n_q=n_q)
      np.save(output, codes.astype(np.int32))
      print(f"{output}: codes {codes.shape} ({len(codes) / cfg.frame_rate:.2f} s)")
  except (api.AudioError, ConfigError, ConversionError, CheckpointPathError, ValueError,
          OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  sys.exit(run(f.codec_ckpt, f.input, f.output, f.decode, f.n_q))


def console() -> None:
  """`python -m mimo_jax.tokenize` and the `mimo-tokenize` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
