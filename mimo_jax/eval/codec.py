"""Codec reconstruction metrics for a checkpoint and a folder of audio:

  python -m mimo_jax.eval.codec --checkpoint=DIR --audio_dir=DIR [--n_q=8] [--output=FILE.json]

--checkpoint is an official tokenizer folder (config.json + model.safetensors) or a codec
training workdir (its export/). Every audio file under --audio_dir (wav, flac, ogg, mp3) is
encoded with the first n_q stages and decoded; the metrics of `codec_metrics` compare the
reconstruction with the input (mono, at the codec's rate). Prints one line per file and the means;
--output writes them as JSON. Unreadable files are listed and skipped.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from mimo_jax.codec import api
from mimo_jax.codec import checkpoint as codec_checkpoint
from mimo_jax.eval import codec_metrics

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def load_codec(path: str):
  """(params, cfg) of a tokenizer folder or of a codec run's workdir (its export/)."""
  export = os.path.join(path, "export")
  return codec_checkpoint.import_codec(export if os.path.isdir(export) else path)


def audio_files(folder: str) -> list[str]:
  found = []
  for root, _, names in os.walk(folder):
    found.extend(os.path.join(root, n) for n in names if n.lower().endswith(AUDIO_SUFFIXES))
  return sorted(found)


def evaluate(params, cfg, paths: list[str], n_q: int) -> dict:
  """Metrics of each readable file and their means: {"files": [...], "mean": {...},
  "skipped": [{"file", "reason"}]}."""
  wavs, names, skipped = [], [], []
  for path in paths:
    try:
      wav, sr = api.load_audio(path)
      wavs.append(api.prepare_audio(wav, sr, cfg, path))
      names.append(path)
    except api.AudioError as e:
      skipped.append({"file": path, "reason": str(e)})
  rows = []
  if wavs:
    codes = api.encode_batch(params, cfg, wavs, cfg.sampling_rate, n_q=n_q)
    for name, wav, recon in zip(names, wavs, api.decode_batch(params, cfg, codes)):
      rows.append({"file": name, **codec_metrics.all_metrics(wav, recon, cfg.sampling_rate)})
  return {"files": rows, "mean": codec_metrics.summarize(rows), "skipped": skipped, "n_q": n_q}


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  flags.DEFINE_string("checkpoint", None, "Tokenizer folder or codec run workdir.",
                      required=True)
  flags.DEFINE_string("audio_dir", None, "Folder of audio files to reconstruct.", required=True)
  flags.DEFINE_integer("n_q", None, "RVQ stages to use (default: min(8, num_quantizers)).")
  flags.DEFINE_string("output", None, "Optional JSON file for the results.")


def main(argv):
  del argv
  args = flags.FLAGS
  params, cfg = load_codec(args.checkpoint)
  n_q = args.n_q or min(api.DEFAULT_N_Q, cfg.num_quantizers)
  paths = audio_files(args.audio_dir)
  if not paths:
    raise app.UsageError(f"--audio_dir: no audio files ({', '.join(AUDIO_SUFFIXES)}) under "
                         f"{args.audio_dir}")
  result = evaluate(params, cfg, paths, n_q)
  keys = ("mel_distance", "stoi", "pesq_nb", "pesq_wb", "si_sdr")
  for row in result["files"]:
    print(os.path.relpath(row["file"], args.audio_dir), " ".join(
        f"{k} {row[k]:.3f}" for k in keys), *row["notes"])
  for item in result["skipped"]:
    logging.warning("skipped %s: %s", item["file"], item["reason"])
  mean = result["mean"]
  print(f"mean over {len(result['files'])} file(s), n_q {n_q}:",
        " ".join(f"{k} {mean[k]:.3f}" for k in keys))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
