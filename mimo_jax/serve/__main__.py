"""python -m mimo_jax.serve --ckpt=DIR --codec_ckpt=DIR [--slots=N] [--port=P]: the HTTP API."""

from __future__ import annotations

import os

import uvicorn
from absl import app, flags, logging

from mimo_jax import inference, serve, sharding
from mimo_jax.config import ConfigError
from mimo_jax.lm import generate as gen
from mimo_jax.lm import model
from mimo_jax.nn.params import logical_axes
from mimo_jax.serve import api, audio, slots


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  flags.DEFINE_string("ckpt", None, "Official MiMo-Audio folder or training run directory.")
  flags.DEFINE_string("codec_ckpt", None, "Audio tokenizer folder.")
  flags.DEFINE_string("tokenizer", None, "Text tokenizer (default: --ckpt's).")
  flags.DEFINE_string("dtype", None, "Compute dtype (default: the checkpoint's).")
  flags.DEFINE_string("mesh", None, "Mesh of the params, e.g. 'data:1,fsdp:-1,tensor:1'.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
  flags.DEFINE_integer("port", 8000, "Port to listen on.")
  flags.DEFINE_integer("slots", 8, "Requests generated together (rows of the jitted loop).")
  flags.DEFINE_integer("max_prompt", 512, "Prompt positions (patches) per request; rounded up "
                       "to a bucket.")
  flags.DEFINE_integer("max_new", 512, "LLM steps per answer (0.16 s of audio each).")
  flags.DEFINE_integer("chunk_steps", 4, "LLM steps between insertions and stream reads.")
  flags.DEFINE_integer("max_queue", 64, "Requests waiting for a slot; more get 429.")
  flags.DEFINE_float("timeout_s", 300.0, "Per request, from arrival to its end.")
  flags.DEFINE_float("max_audio_s", 60.0, "Seconds per input audio.")
  flags.DEFINE_integer("max_body_mb", 25, "Megabytes per request body.")
  flags.DEFINE_string("voices", None, "Folder of NAME.wav voice prompts (the `voice` of speech "
                      "and spoken chat answers; 'default' needs none).")


def _voices(mimo: inference.MimoAudio, folder: str | None) -> dict:
  if folder is None:
    return {}
  if not os.path.isdir(folder):
    raise ConfigError(f"--voices={folder}: not a folder")
  voices = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in (".wav", ".flac", ".ogg", ".mp3"):
      with open(os.path.join(folder, name), "rb") as f:
        try:
          wav, sr = audio.read(f.read(), f"--voices {name}")
        except audio.BadAudio as e:
          raise ConfigError(str(e)) from None
      voices[stem] = mimo.encode_audio(wav, sr)
  return voices


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  for name in ("ckpt", "codec_ckpt"):
    if not f[name].value:
      raise app.UsageError(f"--{name} is required")
  mimo = inference.MimoAudio.load(f.ckpt, f.codec_ckpt, f.tokenizer, dtype=f.dtype)
  mesh = None
  if f.mesh:
    mesh = sharding.make_mesh(f.mesh)
    mimo.params = sharding.shard_params(mimo.params, logical_axes(model.param_specs(mimo.cfg)),
                                        mesh)
  shape = slots.Shape(f.slots, gen.bucket(f.max_prompt), f.max_new)
  limits = api.Limits(max_body_bytes=f.max_body_mb << 20, max_audio_s=f.max_audio_s,
                      timeout_s=f.timeout_s)
  application, _ = serve.build(mimo, shape=shape, chunk_steps=f.chunk_steps, mesh=mesh,
                               max_queue=f.max_queue, voices=_voices(mimo, f.voices),
                               limits=limits)
  logging.info("serving %d slots on http://%s:%d", f.slots, f.host, f.port)
  uvicorn.run(application, host=f.host, port=f.port, log_level="info")


def console() -> None:
  """`python -m mimo_jax.serve` and the `mimo-serve` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
