"""Codec reconstruction metrics for a checkpoint and a folder of audio:

  python -m mimo_jax.eval_codec --checkpoint=DIR --audio_dir=DIR [--n_q=8] [--output=FILE.json]

--checkpoint is an official tokenizer folder (config.json + model.safetensors) or a codec
training run (its export/). Every audio file under --audio_dir (wav, flac, ogg, mp3) is encoded
with the first n_q stages and decoded (`mimo_jax.eval.codec`). Prints one line per file and the
means; --output writes them as JSON. Unreadable files are listed and skipped. The judged codec
task over a manifest (PESQ, STOI, SIM, DNSMOS) is `python -m mimo_jax.evaluate --tasks=codec`.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

METRIC_KEYS = ("mel_distance", "stoi", "pesq_nb", "pesq_wb", "si_sdr")


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  flags.DEFINE_string("checkpoint", None, "Tokenizer folder or codec run workdir.",
                      required=True)
  flags.DEFINE_string("audio_dir", None, "Folder of audio files to reconstruct.", required=True)
  flags.DEFINE_integer("n_q", None, "RVQ stages to use (default: min(8, num_quantizers)).")
  flags.DEFINE_string("output", None, "Optional JSON file for the results.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mimo_jax.codec import api  # noqa: PLC0415 (JAX only when run, for a quick --help)
  from mimo_jax.config import ConfigError  # noqa: PLC0415
  from mimo_jax.eval import codec  # noqa: PLC0415
  from mimo_jax.train import run_dir  # noqa: PLC0415
  args = flags.FLAGS
  paths = codec.audio_files(args.audio_dir)
  if not paths:
    raise app.UsageError(f"--audio_dir: no audio files ({', '.join(codec.AUDIO_SUFFIXES)}) "
                         f"under {args.audio_dir}")
  try:
    params, cfg = run_dir.load_codec(args.checkpoint)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  n_q = args.n_q or min(api.DEFAULT_N_Q, cfg.num_quantizers)
  result = codec.evaluate(params, cfg, paths, n_q)
  for row in result["files"]:
    print(os.path.relpath(row["file"], args.audio_dir), " ".join(
        f"{k} {row[k]:.3f}" for k in METRIC_KEYS), *row["notes"])
  for item in result["skipped"]:
    logging.warning("skipped %s: %s", item["file"], item["reason"])
  mean = result["mean"]
  print(f"mean over {len(result['files'])} file(s), n_q {n_q}:",
        " ".join(f"{k} {mean[k]:.3f}" for k in METRIC_KEYS))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(result, f, indent=1)


def console() -> None:
  """`python -m mimo_jax.eval_codec` and the `mimo-eval-codec` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
