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

import functools
import sys

import jax
from absl import app, flags

from mimo_jax.codec.checkpoint import import_codec
from mimo_jax.config import ConfigError
from mimo_jax.convert.names import ConversionError
from mimo_jax.convert.safetensors_io import CheckpointPathError
from mimo_jax.data import manifest, pretokenize
from mimo_jax.data.audio import AudioLimits
from mimo_jax.data.tokenizer import TextTokenizer, TokenizerError

_MANIFEST = flags.DEFINE_string("manifest", None, "JSONL manifest or LibriSpeech/LibriTTS folder.",
                                required=True)
_CKPT = flags.DEFINE_string("codec_ckpt", None, "Official tokenizer (codec) folder.",
                            required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output folder for shards and the report (local or "
                              "gs://).", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json or a folder with one; default "
                                 "the MiMo-Audio text tokenizer.")
_PER_SHARD = flags.DEFINE_integer("records_per_shard", 256, "Source records per shard.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Clips per codec encode call.")
_LOAD_THREADS = flags.DEFINE_integer("load_threads", 4, "Threads reading and resampling audio.")
_N_Q = flags.DEFINE_integer("n_q", 8, "RVQ stages to keep.")
_MAX_TEXT = flags.DEFINE_integer("max_text_tokens", 4096, "Longer transcripts are skipped.")
_MIN_S = flags.DEFINE_float("min_seconds", 0.5, "Shorter clips are skipped.")
_MAX_S = flags.DEFINE_float("max_seconds", 60.0, "Longer clips are skipped.")
_SILENCE = flags.DEFINE_float("silence_peak", 1e-4, "Clips with no |sample| above this are "
                              "skipped as silent.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() and take "
                                 "this host's share by jax.process_index().")
_INDEX = flags.DEFINE_integer("process_index", None, "This host's index (default: JAX's).")
_COUNT = flags.DEFINE_integer("process_count", None, "Number of hosts (default: JAX's).")
_PROGRESS = flags.DEFINE_float("progress_interval", 10.0, "Seconds between progress lines.")


def run() -> int:
  try:
    settings = pretokenize.Settings(
        records_per_shard=_PER_SHARD.value, n_q=_N_Q.value, max_text_tokens=_MAX_TEXT.value,
        limits=AudioLimits(_MIN_S.value, _MAX_S.value, _SILENCE.value))
    if _DISTRIBUTED.value:
      jax.distributed.initialize()
    index = jax.process_index() if _INDEX.value is None else _INDEX.value
    count = jax.process_count() if _COUNT.value is None else _COUNT.value
    tokenizer = TextTokenizer.load(_TOKENIZER.value) if _TOKENIZER.value else TextTokenizer.mimo()
    params, cfg = import_codec(_CKPT.value)
    skips = manifest.Skips()
    records = manifest.read_source(_MANIFEST.value, skips)
    pretokenize.run(records, skips, _OUTPUT.value, params, cfg,
                    functools.partial(tokenizer.encode, special=False), settings,
                    batch_size=_BATCH.value, load_threads=_LOAD_THREADS.value,
                    process_index=index, process_count=count,
                    source=_MANIFEST.value, progress_interval=_PROGRESS.value)
  except (ConfigError, ConversionError, CheckpointPathError, TokenizerError, ValueError,
          OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main(argv):
  del argv
  sys.exit(run())


if __name__ == "__main__":
  app.run(main)
