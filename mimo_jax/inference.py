"""MiMo-Audio inference: the speech LM, the audio tokenizer (codec) and the text tokenizer behind
one object with a method per task, like the official `MimoAudio` but batched and jitted.

  mimo = MimoAudio.load("ckpt/", "codec/")          # official folders or our Orbax run dirs
  wav = mimo.tts("Hello there.")                    # float32 [samples] at 24 kHz
  text = mimo.asr(wav, 24000)
  for piece in mimo.stream(mimo.prompts.tts("Hello there."), "tts"): play(piece)

Prompts come from `mimo_jax.data.templates` (the formats the model is trained on, spec §7);
the samplers are the official task presets (`lm.sampling.PRESETS`, spec §3.5) unless given; the
stop tokens are the templates'. Generation runs through `lm.generate` (one compilation per
batch / prompt / step bucket); text is read from the text channel and audio from the patches of
the output stream (`generate.output_text_ids` / `output_codes`), then decoded by the codec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from mimo_jax.codec import api as codec_api
from mimo_jax.codec import streaming
from mimo_jax.codec.config import CodecConfig
from mimo_jax.config import MimoAudioConfig
from mimo_jax.data import templates
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.lm import generate as gen
from mimo_jax.lm.sampling import PRESETS, SamplerConfig

DEFAULT_MAX_NEW = 512  # LLM steps (patches of 0.16 s, or text tokens) per answer
# Template task -> official sampler preset (the official speech-to-text dialogue uses the
# spoken-dialogue samplers).
TASK_PRESETS = {"asr_sft": "asr", "tts_sft": "tts", "spoken_dialogue_sft": "spoken_dialogue",
                "s2t_dialogue_sft": "spoken_dialogue", "text_dialogue_sft": "text_chat",
                "audio_understanding_sft": "audio_understanding",
                "speech_continuation": "continuation", "in_context_s2s": "in_context_learning_s2s",
                "asr": "asr", "tts": "tts", "audio_caption": "audio_understanding",
                "interleaved": "default", "text": "text_chat"}


# How the text channel of a spoken answer's stream is made.
STREAM_TEXT = {
    # The official behaviour: the model generates the stream's text and decides when to switch
    # to audio (`<|empty|>`), as it was trained.
    "free": "the model writes the stream's text and chooses when to speak",
    # The text is known (TTS): it is imposed on the layout's chunk schedule and the model makes
    # only the audio and decides its length (`generate._given_choices`). A small model that has
    # not yet learnt when to switch between text and audio still speaks this way.
    "given": "the prompt's text is imposed on the stream's schedule; the model makes the audio",
}


@dataclasses.dataclass(frozen=True)
class Answer:
  """A decoded generation: the text channel's text, the output stream's audio (24 kHz float32,
  empty when none) and the raw `generate.Generation`."""

  text: str
  wav: np.ndarray
  result: gen.Generation


class Piece(NamedTuple):
  wav: np.ndarray  # newly final audio (24 kHz float32, possibly empty)
  text: str  # newly final text of the text channel
  finished: bool  # nothing more will come


class AnswerStream:
  """One answer read as it is generated (`MimoAudio.stream`, the server's slots): each `feed` of
  its new steps (text [n], patches [n, g, c]) gives the audio the codec's streaming decode
  finalises and the text channel's new text. Audio starts at the prompt's open stream (a
  `<|sostm|>` generated later does not restart it) and ends at `<|eostm|>`, which also ends the
  answer (a closed stream has nothing more to hear); the text leaves out special tokens."""

  def __init__(self, mimo: MimoAudio, scfg: streaming.StreamingConfig):
    self._mimo, self._scfg = mimo, scfg
    self._codec_state, self._ended = streaming.start(), False
    self._text_ids, self._text = [], ""

  def feed(self, text_n: np.ndarray, codes_ngc: np.ndarray, done: bool) -> Piece:
    tokens, c = self._mimo.tokens, self._mimo.cfg.audio_channels
    if not self._ended and (text_n == tokens.eostm).any():
      keep = int(np.argmax(text_n == tokens.eostm))
      text_n, codes_ngc, self._ended = text_n[:keep], codes_ngc[:keep], True
    finished = self._ended or done
    frames_tc = codes_ngc[text_n == tokens.empty].reshape(-1, c)
    wav, self._codec_state = streaming.step(self._mimo.codec_params, self._mimo.codec_cfg,
                                            self._codec_state, frames_tc, last=finished,
                                            scfg=self._scfg)
    # Decoded whole each time: a byte-level BPE token may end inside a character.
    self._text_ids += text_n.tolist()
    text = self._mimo.tokenizer.decode(self._text_ids, skip_special_tokens=True)
    new = text[len(self._text):] if finished or not text.endswith("\ufffd") else ""
    self._text = self._text + new
    return Piece(wav, new, finished)


class MimoAudio:
  """Speech LM + codec + text tokenizer. Methods take waveforms (any rate; resampled) or text."""

  def __init__(self, params: dict, cfg: MimoAudioConfig, codec_params: dict,
               codec_cfg: CodecConfig, tokenizer: TextTokenizer):
    self.params, self.cfg = params, cfg
    self.codec_params, self.codec_cfg = codec_params, codec_cfg
    self.tokenizer = tokenizer
    tokenizer.check_fits(cfg.vocab_size)
    self.fmt = templates.Formatter.from_config(cfg, tokenizer)
    self.tokens = self.fmt.layout.tokens

  @classmethod
  def load(cls, ckpt: str, codec_ckpt: str, tokenizer: str | None = None, *,
           dtype: str | None = None, official_bf16_speech_sum: bool = False,
           step: int | None = None) -> MimoAudio:
    """ckpt: an official MiMo-Audio folder (config.json + safetensors) or a training run's
    directory (`run.json` + Orbax `checkpoints/`, the latest step unless `step`). codec_ckpt: an
    official tokenizer folder. tokenizer: a tokenizer.json or its folder (default: ckpt's)."""
    # Orbax and the training stack are imported only when a model is loaded.
    from mimo_jax.train import run_dir  # noqa: PLC0415
    runtime = dict(official_bf16_speech_sum=official_bf16_speech_sum)
    if dtype:
      runtime["dtype"] = dtype
    cfg, params = run_dir.load_params(ckpt, "--ckpt", step=step, **runtime)
    codec_params, codec_cfg = run_dir.load_codec(codec_ckpt)
    return cls(params, cfg, codec_params, codec_cfg, TextTokenizer.load(tokenizer or ckpt))

  # --- generic ----------------------------------------------------------------------------------

  def generate(self, examples: Sequence[templates.Example], preset: str | None = None, *,
               max_new: int = DEFAULT_MAX_NEW, min_new: int = 0, seed: int = 0,
               text_sampler: SamplerConfig | None = None,
               audio_sampler: SamplerConfig | None = None,
               stream_text: str = "free") -> list[Answer]:
    """Continues each prompt (`templates` examples built without an answer) as one batch.
    preset: an official sampler preset (default: the one of the first example's task); row i
    samples with seed + i. stream_text: see `STREAM_TEXT`."""
    requests = [self.request(ex, preset, max_new, min_new, seed + i, text_sampler,
                              audio_sampler, stream_text) for i, ex in enumerate(examples)]
    results = gen.generate(self.params, self.cfg, requests, empty_id=self.tokens.empty)
    codes = [gen.output_codes(r, self.tokens, self.cfg) for r in results]
    wavs = self._decode_audio(codes)
    return [Answer(self.tokenizer.decode(gen.output_text_ids(r, self.tokens)).strip(), w, r)
            for r, w in zip(results, wavs)]

  def stream(self, example: templates.Example, preset: str | None = None, *,
             max_new: int = DEFAULT_MAX_NEW, min_new: int = 0, seed: int = 0,
             chunk_steps: int = 5, text_sampler: SamplerConfig | None = None,
             audio_sampler: SamplerConfig | None = None, stream_text: str = "free",
             scfg: streaming.StreamingConfig = streaming.StreamingConfig()
             ) -> Iterator[np.ndarray]:
    """Audio of one answer as it is generated: every `chunk_steps` LLM steps the new patches of
    the output stream go through the codec's streaming decode, and the audio it finalises is
    yielded (possibly nothing for a while: the decoder holds back `scfg.right_overlap` frames).
    The tokens are those `generate` makes with the same arguments; the audio differs from a
    one-shot decode only at the streaming decoder's window edges. Audio starts at the prompt's
    open stream (a `<|sostm|>` generated later does not restart it) and ends at `<|eostm|>`."""
    request = self.request(example, preset, max_new, min_new, seed, text_sampler,
                            audio_sampler, stream_text)
    prompt_bkl, len_b, keys_b, settings, n = gen.pack(self.cfg, [request])
    state = gen.prefill(self.params, self.cfg, prompt_bkl, len_b, keys_b,
                        empty_id=self.tokens.empty, max_new=n)
    answer, taken = AnswerStream(self, scfg), 0
    while True:
      state = gen.decode(self.params, self.cfg, state, settings, jnp.int32(taken + chunk_steps),
                         empty_id=self.tokens.empty)
      made = int(state.n_new_b[0])
      piece = answer.feed(np.asarray(state.text_bn[0, taken:made]),
                          np.asarray(state.codes_bngc[0, taken:made]), bool(state.done_b[0]))
      taken = made
      if len(piece.wav):
        yield piece.wav
      if piece.finished:
        return

  # --- tasks ------------------------------------------------------------------------------------

  def encode_audio(self, wav, sr: int) -> np.ndarray:
    """Codes [t, c] of a waveform (the LM's channels of the codec)."""
    return codec_api.encode(self.codec_params, self.codec_cfg, wav, sr,
                            n_q=self.cfg.audio_channels)

  def asr(self, wav, sr: int, **kwargs) -> str:
    """Speech -> its transcript (SFT chat format, greedy text)."""
    return self.generate([templates.asr_sft(self.fmt, self.encode_audio(wav, sr))],
                         **kwargs)[0].text

  def tts(self, text: str, **kwargs) -> np.ndarray:
    """Text -> speech at 24 kHz (SFT chat format)."""
    return self.generate([templates.tts_sft(self.fmt, text)], **kwargs)[0].wav

  def continue_speech(self, wav, sr: int, **kwargs) -> np.ndarray:
    """Speech prompt -> its continuation (Base format: the prompt's span left open). Only whole
    patches of the prompt are used (up to 3 trailing frames are dropped)."""
    codes_tc = self.encode_audio(wav, sr)
    whole = len(codes_tc) - len(codes_tc) % self.cfg.group_size
    if whole == 0:
      raise ValueError(f"continue_speech: the prompt gives {len(codes_tc)} frames, under one "
                       f"patch of {self.cfg.group_size}")
    return self.generate([templates.speech_continuation(self.fmt, codes_tc[:whole])],
                         **kwargs)[0].wav

  def in_context_s2s(self, instruction: str, examples: Sequence[tuple], wav, sr: int,
                     **kwargs) -> np.ndarray:
    """Few-shot speech-to-speech (Base format): `examples` of (input wav, output wav,
    output transcript) at `sr`, then the query; returns the generated speech."""
    shots = [(self.encode_audio(a, sr), self.encode_audio(b, sr), t) for a, b, t in examples]
    prompt = templates.in_context_s2s(self.fmt, instruction, shots, self.encode_audio(wav, sr))
    return self.generate([prompt], **kwargs)[0].wav

  def spoken_dialogue(self, wav, sr: int, voice=None, **kwargs) -> Answer:
    """A spoken user turn -> the spoken reply (text of the stream and its audio); `voice`: an
    optional waveform at `sr` whose timbre the reply should take."""
    voice_tc = None if voice is None else self.encode_audio(voice, sr)
    user = templates.Turn("user", (self.encode_audio(wav, sr),))
    return self.generate([templates.spoken_dialogue_sft(self.fmt, [user], voice_tc=voice_tc)],
                         **kwargs)[0]

  def speech2text_dialogue(self, wav, sr: int, **kwargs) -> str:
    user = templates.Turn("user", (self.encode_audio(wav, sr),))
    return self.generate([templates.s2t_dialogue_sft(self.fmt, [user])], **kwargs)[0].text

  def audio_understanding(self, wav, sr: int, question: str, **kwargs) -> str:
    return self.generate([templates.audio_understanding_sft(
        self.fmt, self.encode_audio(wav, sr), question)], **kwargs)[0].text

  def text_dialogue(self, text: str, **kwargs) -> str:
    user = templates.Turn("user", (text,))
    return self.generate([templates.text_dialogue_sft(self.fmt, [user])], **kwargs)[0].text

  # --- internals --------------------------------------------------------------------------------

  def request(self, example: templates.Example, preset, max_new, min_new, seed, text_sampler,
               audio_sampler, stream_text) -> gen.Request:
    """The generation request of a prompt `example` (what `generate`, `stream` and the server
    submit): the sampler preset's settings unless given, and the given stream text if asked."""
    if not example.is_prompt:
      raise ValueError(f"{example.task}: the example holds an answer; build it without one to "
                       f"get a generation prompt")
    name = preset or TASK_PRESETS.get(example.task, "default")
    if name not in PRESETS:
      raise ValueError(f"preset: unknown {name!r}; known: {sorted(PRESETS)}")
    if stream_text not in STREAM_TEXT:
      raise ValueError(f"stream_text: unknown {stream_text!r}; known: {sorted(STREAM_TEXT)}")
    given = ()
    if stream_text == "given":
      if example.stream_text_ids is None:
        raise ValueError(f"{example.task}: stream_text='given' needs a prompt that says what the "
                         f"answer speaks (tts, tts_sft); this one does not")
      given = (*map(int, example.stream_text_ids), self.tokens.eot)
    lay = self.fmt.layout
    return gen.Request(example.ids_kl, max_new, example.stop_tokens, min_new,
                       text_sampler or PRESETS[name].text, audio_sampler or PRESETS[name].audio,
                       seed, given_text=given, stream_chunks=(lay.text_chunk, lay.audio_chunk))

  def _decode_audio(self, codes: list[np.ndarray]) -> list[np.ndarray]:
    present = [i for i, c in enumerate(codes) if len(c)]
    wavs = [np.zeros(0, np.float32)] * len(codes)
    if present:
      decoded = codec_api.decode_batch(self.codec_params, self.codec_cfg,
                                       [codes[i] for i in present])
      for i, w in zip(present, decoded):
        wavs[i] = w
    return wavs

