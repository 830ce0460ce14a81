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

_CKPT = flags.DEFINE_string("ckpt", None, "Official MiMo-Audio folder or training run directory.")
_CODEC = flags.DEFINE_string("codec_ckpt", None, "Audio tokenizer folder.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Text tokenizer (default: --ckpt's).")
_DTYPE = flags.DEFINE_string("dtype", None, "Compute dtype (default: the checkpoint's).")
_MESH = flags.DEFINE_string("mesh", None, "Mesh of the params, e.g. 'data:1,fsdp:-1,tensor:1'.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.")
_SLOTS = flags.DEFINE_integer("slots", 8, "Requests generated together (rows of the jitted loop).")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt", 512, "Prompt positions (patches) per request; "
                                   "rounded up to a bucket.")
_MAX_NEW = flags.DEFINE_integer("max_new", 512, "LLM steps per answer (0.16 s of audio each).")
_CHUNK = flags.DEFINE_integer("chunk_steps", 4, "LLM steps between insertions and stream reads.")
_QUEUE = flags.DEFINE_integer("max_queue", 64, "Requests waiting for a slot; more get 429.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 300.0, "Per request, from arrival to its end.")
_MAX_AUDIO = flags.DEFINE_float("max_audio_s", 60.0, "Seconds per input audio.")
_MAX_BODY = flags.DEFINE_integer("max_body_mb", 25, "Megabytes per request body.")
_VOICES = flags.DEFINE_string("voices", None, "Folder of NAME.wav voice prompts (the `voice` "
                              "of speech and spoken chat answers; 'default' needs none).")


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
  del argv
  for flag in (_CKPT, _CODEC):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required")
  mimo = inference.MimoAudio.load(_CKPT.value, _CODEC.value, _TOKENIZER.value, dtype=_DTYPE.value)
  mesh = None
  if _MESH.value:
    mesh = sharding.make_mesh(_MESH.value)
    mimo.params = sharding.shard_params(mimo.params, logical_axes(model.param_specs(mimo.cfg)),
                                        mesh)
  shape = slots.Shape(_SLOTS.value, gen.bucket(_MAX_PROMPT.value), _MAX_NEW.value)
  limits = api.Limits(max_body_bytes=_MAX_BODY.value << 20, max_audio_s=_MAX_AUDIO.value,
                      timeout_s=_TIMEOUT.value)
  application, _ = serve.build(mimo, shape=shape, chunk_steps=_CHUNK.value, mesh=mesh,
                               max_queue=_QUEUE.value, voices=_voices(mimo, _VOICES.value),
                               limits=limits)
  logging.info("serving %d slots on http://%s:%d", _SLOTS.value, _HOST.value, _PORT.value)
  uvicorn.run(application, host=_HOST.value, port=_PORT.value, log_level="info")


if __name__ == "__main__":
  app.run(main)
