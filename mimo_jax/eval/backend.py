"""The model side of an evaluation: `data.templates` prompts through `MimoAudio.generate`.

Each method takes a batch and makes one `generate` call (batched and jitted; one compilation per
shape bucket). `prompt_format` picks the Base pre-training prompts ("pretrain": `templates.asr`,
`templates.tts`) or the SFT chat prompts ("sft": `asr_sft`, `tts_sft`) for ASR and TTS; speech
continuation, few-shot and in-context S2S are Base formats, spoken dialogue an SFT one.
Waveforms in and out are float32 at the codec's rate (`rate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mimo_jax.data import templates
from mimo_jax.eval import fewshot
from mimo_jax.lm import layout

PROMPT_FORMATS = ("pretrain", "sft")
# MiMo-Audio-Eval's few-shot answer lengths (min, max LLM steps): a text answer names an option
# in a few tokens, a spoken one in a few patches.
FEW_SHOT_TEXT_STEPS = (5, 10)
FEW_SHOT_SPEECH_STEPS = (10, 25)


class MimoBackend:
  """Generation for the evaluation tasks. `mimo`: an `inference.MimoAudio`."""

  def __init__(self, mimo, prompt_format: str = "sft", max_new: int = 512, seed: int = 0):
    if prompt_format not in PROMPT_FORMATS:
      raise ValueError(f"--prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    self.mimo, self.prompt_format, self.max_new, self.seed = mimo, prompt_format, max_new, seed
    self.rate = mimo.codec_cfg.sampling_rate
    self.codec = (mimo.codec_params, mimo.codec_cfg)

  def _generate(self, prompts, **kwargs):
    return self.mimo.generate(prompts, **{"max_new": self.max_new, "seed": self.seed, **kwargs})

  def _codes(self, wav) -> np.ndarray:
    return self.mimo.encode_audio(wav, self.rate)

  def asr(self, wavs: Sequence[np.ndarray]) -> list[str]:
    fmt = self.mimo.fmt
    build = templates.asr_sft if self.prompt_format == "sft" else templates.asr
    return [a.text for a in self._generate([build(fmt, self._codes(w)) for w in wavs])]

  def tts(self, texts: Sequence[str], **generate_kwargs) -> list[np.ndarray]:
    """Speech for each text. The one TTS call of the evaluation: `generate_kwargs` (samplers,
    a text-stream mode, ...) go to `MimoAudio.generate` unchanged."""
    fmt = self.mimo.fmt
    build = templates.tts_sft if self.prompt_format == "sft" else templates.tts
    return [a.wav for a in self._generate([build(fmt, t) for t in texts], **generate_kwargs)]

  def continue_speech(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The continuation of each prompt (only its whole patches are used)."""
    g = self.mimo.cfg.group_size
    prompts = []
    for wav in wavs:
      codes_tc = self._codes(wav)
      prompts.append(templates.speech_continuation(self.mimo.fmt,
                                                   codes_tc[:len(codes_tc) - len(codes_tc) % g]))
    return [a.wav for a in self._generate(prompts)]

  def dialogue(self, wavs: Sequence[np.ndarray]) -> list[tuple[str, np.ndarray]]:
    fmt = self.mimo.fmt
    prompts = [templates.spoken_dialogue_sft(fmt, [templates.Turn("user", (self._codes(w),))])
               for w in wavs]
    return [(a.text, a.wav) for a in self._generate(prompts)]

  def in_context_s2s(self, requests: Sequence[tuple]) -> list[np.ndarray]:
    """requests: (instruction, shots [(input wav, output wav, output transcript)], query wav)."""
    prompts = [templates.in_context_s2s(
        self.mimo.fmt, instruction, [(self._codes(a), self._codes(b), t) for a, b, t in shots],
        self._codes(query)) for instruction, shots, query in requests]
    return [a.wav for a in self._generate(prompts)]

  def few_shot(self, prompts: Sequence[Sequence[fewshot.Part]], audio: dict,
               speech_answer: bool) -> list[tuple[str, np.ndarray]]:
    """Few-shot answers (text, speech). audio: path -> waveform for every AUDIO/STREAM part."""
    fmt, tokens = self.mimo.fmt, self.mimo.tokens
    examples = []
    for parts in prompts:
      segments = [fmt.markup(fewshot.prefix(parts))] if fewshot.prefix(parts) else []
      for part in parts:
        if part.kind == fewshot.TEXT:
          segments.append(fmt.data(part.text))
        elif part.kind == fewshot.AUDIO:
          segments.append(layout.AudioSegment(self._codes(audio[part.audio])))
        else:
          segments.append(fmt.stream(part.text, self._codes(audio[part.audio])))
      stop = (tokens.endoftext, tokens.eostm) if speech_answer else (tokens.endoftext,)
      if speech_answer:
        segments.append(fmt.markup("<|sostm|>"))
      ids_kl = layout.build_sequence(segments, fmt.layout)
      n = ids_kl.shape[1] // fmt.layout.group_size
      examples.append(templates.Example("few_shot", ids_kl, np.zeros(n, bool), n, stop))
    min_new, max_new = FEW_SHOT_SPEECH_STEPS if speech_answer else FEW_SHOT_TEXT_STEPS
    preset = "in_context_learning_s2s" if speech_answer else "few_shot_qa"  # greedy text
    return [(a.text, a.wav) for a in self._generate(examples, preset=preset, min_new=min_new,
                                                    max_new=max_new)]
