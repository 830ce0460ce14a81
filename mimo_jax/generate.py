"""Generate with MiMo-Audio from the command line.

  python -m mimo_jax.generate --task=tts --text="Hello there." --ckpt=DIR --codec_ckpt=DIR \\
      --output=out.wav [--tokenizer=DIR] [--max_new=512] [--seed=0] [--stream]
  python -m mimo_jax.generate --task=asr --audio=in.wav --ckpt=DIR --codec_ckpt=DIR

--ckpt is an official MiMo-Audio folder (config.json + safetensors) or a training run directory
(run.json + Orbax checkpoints/); --codec_ckpt an official tokenizer folder or a codec run;
--tokenizer the text tokenizer (default: the one in --ckpt). Tasks (`inference.MimoAudio`
methods, spec §7 prompts):

  tts                  --text           -> speech (--output)
  asr                  --audio          -> text
  continuation         --audio          -> speech (--output)
  spoken_dialogue      --audio          -> text and speech (--output)
  s2t_dialogue         --audio          -> text
  audio_understanding  --audio --text   -> text (--text is the question)
  text_dialogue        --text           -> text

The text answer is printed; speech is written to --output at 24 kHz. --stream generates speech
through the streaming decoder and reports the time to the first audio. Bad input ends with a
one-line error and exit status 1.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import soundfile
from absl import app, flags

from mimo_jax.codec import api as codec_api
from mimo_jax.config import ConfigError
from mimo_jax.convert.names import ConversionError
from mimo_jax.convert.safetensors_io import CheckpointPathError
from mimo_jax.data import templates
from mimo_jax.data.tokenizer import TokenizerError
from mimo_jax.inference import MimoAudio

# task -> (needs --text, needs --audio, answers with speech)
TASKS = {"tts": (True, False, True), "asr": (False, True, False),
         "continuation": (False, True, True), "spoken_dialogue": (False, True, True),
         "s2t_dialogue": (False, True, False), "audio_understanding": (True, True, False),
         "text_dialogue": (True, False, False)}


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module adds no
  flags to another program's)."""
  flags.DEFINE_enum("task", None, list(TASKS), "What to generate.", required=True)
  flags.DEFINE_string("ckpt", None, "Official MiMo-Audio folder or training run directory.",
                      required=True)
  flags.DEFINE_string("codec_ckpt", None, "Official tokenizer (codec) folder or codec run.",
                      required=True)
  flags.DEFINE_string("tokenizer", None, "Text tokenizer.json or its folder (default: --ckpt).")
  flags.DEFINE_string("text", None, "Input text (tts, text_dialogue) or question.")
  flags.DEFINE_string("audio", None, "Input audio file (any rate; resampled to 24 kHz).")
  flags.DEFINE_string("output", None, "Output wav for tasks that answer with speech.")
  flags.DEFINE_integer("max_new", 512, "At most this many LLM steps (0.16 s patches or tokens).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("dtype", None, "Compute dtype (default: the config's, bfloat16).")
  flags.DEFINE_bool("stream", False, "Speech through the streaming decoder (time to first audio).")


def prompt(mimo: MimoAudio, task: str, text: str | None, audio_tc: np.ndarray | None
           ) -> templates.Example:
  """The generation prompt of a task (data templates)."""
  fmt = mimo.fmt
  if task == "tts":
    return templates.tts_sft(fmt, text)
  if task == "asr":
    return templates.asr_sft(fmt, audio_tc)
  if task == "continuation":
    g = mimo.cfg.group_size
    if len(audio_tc) < g:
      raise ValueError(f"--audio: {len(audio_tc)} frames, under one patch of {g}")
    return templates.speech_continuation(fmt, audio_tc[:len(audio_tc) - len(audio_tc) % g])
  if task == "spoken_dialogue":
    return templates.spoken_dialogue_sft(fmt, [templates.Turn("user", (audio_tc,))])
  if task == "s2t_dialogue":
    return templates.s2t_dialogue_sft(fmt, [templates.Turn("user", (audio_tc,))])
  if task == "audio_understanding":
    return templates.audio_understanding_sft(fmt, audio_tc, text)
  return templates.text_dialogue_sft(fmt, [templates.Turn("user", (text,))])


def run(task: str, *, ckpt: str, codec_ckpt: str, tokenizer: str | None = None,
        text: str | None = None, audio: str | None = None, output: str | None = None,
        max_new: int = 512, seed: int = 0, dtype: str | None = None, stream: bool = False,
        mimo: MimoAudio | None = None) -> int:
  """One generation; returns the exit status. `mimo` reuses an already loaded model."""
  needs_text, needs_audio, speaks = TASKS[task]
  try:
    if needs_text and not text:
      raise ValueError(f"--text: required by --task={task}")
    if needs_audio and not audio:
      raise ValueError(f"--audio: required by --task={task}")
    if speaks and not output:
      raise ValueError(f"--output: required by --task={task} (a wav file)")
    mimo = mimo or MimoAudio.load(ckpt, codec_ckpt, tokenizer, dtype=dtype)
    audio_tc = None
    if needs_audio:
      wav, sr = codec_api.load_audio(audio)
      audio_tc = mimo.encode_audio(wav, sr)
    example = prompt(mimo, task, text, audio_tc)
    rate = mimo.codec_cfg.sampling_rate
    start = time.perf_counter()
    if speaks and stream:
      pieces, first = [], None
      for piece in mimo.stream(example, max_new=max_new, seed=seed):
        first = first or time.perf_counter() - start
        pieces.append(piece)
      wav = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
      print(f"time to first audio: {first:.2f} s" if first else "no audio generated")
    else:
      answer = mimo.generate([example], max_new=max_new, seed=seed)[0]
      wav = answer.wav
      print(answer.text)
    if speaks:
      soundfile.write(output, wav, rate)
      print(f"{output}: {len(wav) / rate:.2f} s at {rate} Hz "
            f"({time.perf_counter() - start:.1f} s to generate)")
  except (codec_api.AudioError, ConfigError, ConversionError, CheckpointPathError,
          TokenizerError, templates.TemplateError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main(argv):
  del argv
  from mimo_jax.train.checkpoint import quiet_orbax_logs  # noqa: PLC0415 (orbax only when run)
  quiet_orbax_logs()
  f = flags.FLAGS
  sys.exit(run(f.task, ckpt=f.ckpt, codec_ckpt=f.codec_ckpt, tokenizer=f.tokenizer, text=f.text,
               audio=f.audio, output=f.output, max_new=f.max_new, seed=f.seed, dtype=f.dtype,
               stream=f.stream))


def console() -> None:
  """`python -m mimo_jax.generate` and the `mimo-generate` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()
