"""Audio corpus -> ArrayRecord shards of codec codes and text ids, on every host of a pod.

  python -m mimo_jax.pretokenize --manifest=corpus.jsonl --codec_ckpt=DIR --output=shards/
  python -m mimo_jax.pretokenize --manifest=LibriSpeech/train-clean-100 --codec_ckpt=DIR ...

--manifest is a JSONL manifest or a LibriSpeech / LibriTTS folder; --codec_ckpt an official
tokenizer folder (config.json + model.safetensors); --tokenizer a tokenizer.json (default: the
MiMo-Audio text tokenizer rebuilt offline). On a pod, run the same command on every host with
--distributed (or give --process_index / --process_count): each host writes its share of the
shards. Rerunning the command resumes: finished shards are kept, partial ones rewritten. See
`mimo_jax/data/pretokenize.py` for the shard format and the report.
"""

import sys

import jax
from absl import app, flags

from mimo_jax.config import ConfigError
from mimo_jax.convert.names import ConversionError
from mimo_jax.convert.safetensors_io import CheckpointPathError
from mimo_jax.data import manifest, pretokenize
from mimo_jax.data.audio import AudioLimits
from mimo_jax.data.tokenizer import TextTokenizer, TokenizerError
from mimo_jax.train import run_dir


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  flags.DEFINE_string("manifest", None, "JSONL manifest or LibriSpeech/LibriTTS folder.",
                      required=True)
  flags.DEFINE_string("codec_ckpt", None, "Official tokenizer (codec) folder or codec run.",
                      required=True)
  flags.DEFINE_string("output", None, "Output folder for shards and the report (local or gs://).",
                      required=True)
  flags.DEFINE_string("tokenizer", None, "tokenizer.json or a folder with one; default the "
                      "MiMo-Audio text tokenizer.")
  flags.DEFINE_integer("records_per_shard", 256, "Source records per shard.")
  flags.DEFINE_integer("batch_size", 8, "Clips per codec encode call.")
  flags.DEFINE_integer("load_threads", 4, "Threads reading and resampling audio.")
  flags.DEFINE_integer("n_q", 8, "RVQ stages to keep.")
  flags.DEFINE_integer("max_text_tokens", 4096, "Longer transcripts are skipped.")
  flags.DEFINE_float("min_seconds", 0.5, "Shorter clips are skipped.")
  flags.DEFINE_float("max_seconds", 60.0, "Longer clips are skipped.")
  flags.DEFINE_float("silence_peak", 1e-4, "Clips with no |sample| above this are skipped as "
                     "silent.")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() and take this "
                    "host's share by jax.process_index().")
  flags.DEFINE_integer("process_index", None, "This host's index (default: JAX's).")
  flags.DEFINE_integer("process_count", None, "Number of hosts (default: JAX's).")
  flags.DEFINE_float("progress_interval", 10.0, "Seconds between progress lines.")


def run(f: flags.FlagValues) -> int:
  """Pre-tokenises what the parsed flags `f` say; returns the exit status."""
  try:
    settings = pretokenize.Settings(
        records_per_shard=f.records_per_shard, n_q=f.n_q, max_text_tokens=f.max_text_tokens,
        limits=AudioLimits(f.min_seconds, f.max_seconds, f.silence_peak))
    if f.distributed:
      jax.distributed.initialize()
    index = jax.process_index() if f.process_index is None else f.process_index
    count = jax.process_count() if f.process_count is None else f.process_count
    tokenizer = TextTokenizer.load(f.tokenizer) if f.tokenizer else TextTokenizer.mimo()
    params, cfg = run_dir.load_codec(f.codec_ckpt)
    skips = manifest.Skips()
    records = manifest.read_source(f.manifest, skips)
    pretokenize.run(records, skips, f.output, params, cfg, tokenizer, settings,
                    batch_size=f.batch_size, load_threads=f.load_threads,
                    process_index=index, process_count=count,
                    source=f.manifest, progress_interval=f.progress_interval)
  except (ConfigError, ConversionError, CheckpointPathError, TokenizerError, ValueError,
          OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  sys.exit(run(flags.FLAGS))


def console() -> None:
  """`python -m mimo_jax.pretokenize` and the `mimo-pretokenize` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
