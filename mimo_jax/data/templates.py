"""Task templates: training examples and generation prompts in the [1 + C, G * P] layout.

One function per task serves both uses. Given the answer, it returns the whole `Example` with a
loss mask; given no answer (`None`), it returns the generation prompt, which is exactly the
example's first `prompt_positions` positions and ends where the model continues (after
`<|sostm|>` when the answer is speech). `Example.stop_tokens` lists the text tokens that end the
answer (spec §3.5 stop sets for the SFT tasks), so a generator needs nothing else:

  ex = templates.asr_sft(fmt, audio_tc)                # prompt
  ex.ids_kl                                            # [1 + C, G * P] int32, feed to generate
  ex.stop_tokens                                       # (<|endoftext|>, <|im_end|>)
  templates.tts(fmt, "hi").stream_text_ids             # what the answer stream will say
  train = templates.asr_sft(fmt, audio_tc, "hello")    # same prompt + answer + <|im_end|>
  train.loss_mask_p                                    # True on the answer positions only

Pre-training formats (Base model, no chat markup; every position is trained, the phase's loss
weights decide which channels count; each document ends with `<|endoftext|>`):

| task | training sequence | prompt ends after |
|---|---|---|
| `interleaved` | stream(text, audio) | `<|sostm|>` |
| `asr` | audio span, `\\n`, transcript | `\\n` |
| `audio_caption` | audio span, `Description: `, caption | `Description: ` |
| `tts` | text, `\\n`, stream(text, audio) | `<|sostm|>` |
| `speech_continuation` | one span: prompt audio + continuation | prompt audio (span open) |
| `text` | prompt text + continuation | the prompt text |

"audio span" = `<|sosp|>` patches `<|eosp|>`; "stream" = `<|sostm|>`, 5 text tokens and 5 patches
alternating, `<|eot|>`, `<|eostm|>` (`layout.StreamSegment`). MiMo-Audio released no training code,
so these pre-training layouts are this project's choice, built from the formats the official
few-shot prompts use (input span, `\\n`, output stream).

SFT chat formats (the official prompt builders of `MimoAudio`, spec §7; loss only on the answer
and its closing `<|im_end|>`): `chat` renders any conversation; `asr_sft`, `tts_sft`,
`instruct_tts_sft` (also with a voice prompt), `audio_understanding_sft`, `spoken_dialogue_sft`,
`s2t_dialogue_sft` and `text_dialogue_sft` are the official tasks on top of it (the dialogue ones
take a multi-turn history; only the last reply is trained). A text answer follows
`<think>\\n\\n</think>\\n` (or `<think>\\n` with `thinking=True`, where the answer holds the
reasoning, `</think>` and the reply); a speech answer is a stream after `<|im_start|>assistant\\n`.
SFT data (the JSONL `messages` of `mimo_jax.data.manifest`) is rendered by `conversation`, which
trains every assistant turn and nothing else; each task above is such a conversation.

`PHASE_MIXTURES` and `example_for` pick a task per utterance for each training phase,
deterministically from (seed, index).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from mimo_jax.config import MimoAudioConfig
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.lm import layout
from mimo_jax.lm.layout import AudioSegment, Layout, Segment, StreamSegment, TextSegment

# Instruction strings of the official SFT prompts (`templates.py` of XiaomiMiMo/MiMo-Audio): the
# ASR prompt draws from zh + en together, the TTS prompt from the text's language.
ASR_ZH = ("请将这段语音转换为文字", "帮我识别这个音频文件中的内容", "把这段录音转成文本", "请转录这段语音",
          "将音频内容转换成文字格式", "识别并转写这段语音", "把语音内容写成文字", "转录这个音频片段",
          "将这段对话转换为文本", "麻烦帮我把这段录音整理成详细的文字记录")
ASR_EN = ("Please transcribe this audio file", "Convert this speech recording to text",
          "Transcribe the following voice message", "Turn this audio into readable text",
          "Please convert the recording to written format",
          "Transcribe what you hear in this audio", "Convert this spoken content to text",
          "Please write down what is said in this recording", "Transcribe this voice recording",
          "Could you please help me transcribe this important recording?",
          "Would you mind converting this voice message into a readable text format?",
          "I'd really appreciate it if you could turn this audio file into a written document")
TTS_ZH = ("请将这段文字转换为语音", "帮我把这个文本读出来", "将这些文字生成音频", "请朗读这段内容",
          "把这段话转换成语音文件", "生成这段文字的语音版本", "请用语音播报这些内容", "将文本转换为可听的音频",
          "帮我朗读这段文字", "把这些内容念出来")
TTS_EN = ("Please convert this text to speech", "Turn this writing into audio",
          "Generate speech from this text", "Read this content out loud",
          "Convert these words to voice", "Create an audio version of this text",
          "Please vocalize this content", "Turn this text into audible format",
          "Help me convert this writing to speech", "Make this text into spoken audio")
# System prompt of the official spoken dialogue with a voice prompt.
VOICE_PROMPT = "Your voice should be:"
# System prompts of the official instruct TTS: speech in the instruction's style ("generate speech
# from the style instruction and the text"), and with a voice prompt also in its timbre ("... with
# the same timbre as the speech prompt. Your timbre should be:", the prompt audio follows).
STYLE_SYSTEM = "你需要根据指定的风格指令和文本内容来生成语音。"
VOICE_STYLE_SYSTEM = "你需要根据指定的风格指令和文本内容来生成和语音prompt具有相同音色的语音。你的音色应该是："
NO_THINKING = "<think>\n\n</think>\n"
THINKING = "<think>\n"
# What closes an empty think block opened by THINKING (THINKING + EMPTY_THOUGHT reads NO_THINKING).
EMPTY_THOUGHT = "\n</think>\n"

PRETRAIN_TASKS = ("interleaved", "asr", "audio_caption", "tts", "speech_continuation", "text")
SFT_TASKS = ("asr_sft", "tts_sft")
# Task names of SFT conversations (JSONL `messages`, rendered by `conversation`): the official
# chat tasks, and `chat` for any other conversation.
CHAT_TASKS = ("asr_sft", "tts_sft", "instruct_tts_sft", "audio_understanding_sft",
              "spoken_dialogue_sft", "s2t_dialogue_sft", "text_dialogue_sft", "chat")
# Task weights per training phase (spec §5.1): stage 1 trains understanding formats, stage 2 adds
# generation ones; the SFT mixture covers what an utterance corpus can form (conversations of SFT
# data carry their own task, `conversation`). The report gives no ratios: equal weights.
PHASE_MIXTURES: dict[str, dict[str, float]] = {
    "understanding": {"interleaved": 1.0, "asr": 1.0, "audio_caption": 1.0, "text": 1.0},
    "generation": {"interleaved": 1.0, "asr": 1.0, "audio_caption": 1.0, "text": 1.0,
                   "speech_continuation": 1.0, "tts": 1.0},
    "sft": {"asr_sft": 1.0, "tts_sft": 1.0},
}


class TemplateError(ValueError):
  """An input a task needs is missing or unusable; the message names the task and the input."""


@dataclasses.dataclass(frozen=True)
class Formatter:
  """What every template needs: the text tokenizer and the layout (ids, patch size, channels)."""

  tokenizer: TextTokenizer
  layout: Layout

  @classmethod
  def from_config(cls, cfg: MimoAudioConfig, tokenizer: TextTokenizer) -> Formatter:
    return cls(tokenizer, Layout.from_config(cfg, tokenizer.hf))

  def markup(self, text: str) -> TextSegment:
    """Template text: `<|...|>` strings are control tokens."""
    return TextSegment(self.tokenizer.encode(text, special=True))

  def data(self, text: str) -> TextSegment:
    """Data text (transcripts, messages): special strings stay plain text."""
    return TextSegment(self.tokenizer.encode(text, special=False))

  def stream(self, text: str, audio_tc: np.ndarray) -> StreamSegment:
    return StreamSegment(self.tokenizer.encode(text, special=False), audio_tc)


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
  """One task instance.

  ids_kl: int32 [1 + C, G * P] layout ids. loss_mask_p: bool [P], True where the position's token
  is a training target (all False for a prompt). prompt_positions: P of the generation prompt (the
  whole sequence for a prompt). stop_tokens: text tokens that end the answer.
  """

  task: str
  ids_kl: np.ndarray
  loss_mask_p: np.ndarray
  prompt_positions: int
  stop_tokens: tuple[int, ...]
  # Text ids [n] the answer stream speaks when the prompt already says them (TTS), so a
  # generator may give the stream's text channel instead of sampling it; None otherwise.
  stream_text_ids: np.ndarray | None = None

  @property
  def n_positions(self) -> int:
    return len(self.loss_mask_p)

  @property
  def is_prompt(self) -> bool:
    return self.prompt_positions == len(self.loss_mask_p)


@dataclasses.dataclass(frozen=True, eq=False)
class _Target:
  """Context segments trained like the answer: a past reply of SFT data (every assistant turn of
  a conversation is a target, not only the last)."""

  segments: list[Segment]


def _columns(fmt: Formatter, items: Sequence[Segment | _Target]) -> tuple[np.ndarray, np.ndarray]:
  """The [1 + C, G * P] columns of the items and their loss mask [P]: True on `_Target` positions
  except a target's opening `<|sostm|>`, which the context gives (the model continues after it)."""
  lay = fmt.layout
  columns, masks = [np.zeros((1 + lay.n_channels, 0), np.int32)], [np.zeros(0, bool)]
  for item in items:
    trained = isinstance(item, _Target)
    for i, segment in enumerate(item.segments if trained else [item]):
      segment_kl = layout.segment_columns(segment, lay)
      mask_p = np.full(segment_kl.shape[1] // lay.group_size, trained)
      if trained and i == 0 and isinstance(segment, StreamSegment):
        mask_p[0] = False
      columns.append(segment_kl)
      masks.append(mask_p)
  return np.concatenate(columns, axis=1), np.concatenate(masks)


def _example(fmt: Formatter, task: str, prompt: list[Segment | _Target],
             answer: list[Segment] | None, after: list[Segment], stop: Sequence[str],
             train_all: bool) -> Example:
  """prompt + answer + after, the answer and the prompt's `_Target`s trained (everything with
  `train_all`). With answer None, the prompt alone: a caller whose answer is a stream ends it with
  `<|sostm|>`, the stream's first position, so a prompt is always a prefix of its example."""
  stop_ids = tuple(fmt.tokenizer.token_to_id(s) for s in stop)
  prompt_kl, prompt_mask_p = _columns(fmt, prompt)
  n_prompt = len(prompt_mask_p)
  if answer is None:
    return Example(task, prompt_kl, np.zeros(n_prompt, bool), n_prompt, stop_ids)
  rest_kl, rest_mask_p = _columns(fmt, [_Target(answer), *after])
  ids_kl = np.concatenate([prompt_kl, rest_kl], axis=1)
  mask_p = np.concatenate([prompt_mask_p, rest_mask_p])
  if train_all:
    mask_p[:] = True
  if isinstance(answer[0], StreamSegment):  # the stream's <|sostm|> belongs to the prompt
    n_prompt += 1
  return Example(task, ids_kl, mask_p, n_prompt, stop_ids)


def _prompt_with_stream_open(fmt: Formatter, prompt: list[Segment]) -> list[Segment]:
  return prompt + [TextSegment([fmt.layout.tokens.sostm])]


def _require(task: str, **inputs) -> None:
  for name, value in inputs.items():
    if value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, np.ndarray) and len(value) == 0):
      raise TemplateError(f"{task}: {name} is empty")


# --- pre-training formats ---------------------------------------------------------------------

_EOS = "<|endoftext|>"


def interleaved(fmt: Formatter, text: str | None = None, audio_tc: np.ndarray | None = None
                ) -> Example:
  """Speech-text interleaved: one stream of the transcript and its audio [T, C]; the prompt is
  `<|sostm|>` alone (free interleaved generation)."""
  if text is None and audio_tc is None:
    return _example(fmt, "interleaved", [fmt.markup("<|sostm|>")], None, [], ("<|eostm|>", _EOS),
                    True)
  _require("interleaved", text=text, audio_tc=audio_tc)
  return _example(fmt, "interleaved", [], [fmt.stream(text, audio_tc), fmt.markup(_EOS)], [],
                  ("<|eostm|>", _EOS), True)


def asr(fmt: Formatter, audio_tc: np.ndarray, text: str | None = None) -> Example:
  """ASR (pre-training): the audio span, a newline, then the transcript."""
  return _audio_to_text(fmt, "asr", audio_tc, text, "\n")


def audio_caption(fmt: Formatter, audio_tc: np.ndarray, caption: str | None = None) -> Example:
  """Audio captioning (pre-training): the audio span, `Description: `, then a description.
  No task's prompt may be a prefix of another task's example: ASR's prompt (span, `\\n`) would
  then be continued with the fixed cue, the likeliest continuation, instead of a transcript. So
  the cue differs from ASR's at the first position after the span."""
  return _audio_to_text(fmt, "audio_caption", audio_tc, caption, "Description: ")


def _audio_to_text(fmt: Formatter, task: str, audio_tc: np.ndarray, text: str | None,
                   cue: str) -> Example:
  _require(task, audio_tc=audio_tc)
  prompt = [AudioSegment(audio_tc), fmt.markup(cue)]
  if text is None:
    return _example(fmt, task, prompt, None, [], (_EOS,), True)
  _require(task, text=text)
  return _example(fmt, task, prompt, [fmt.data(text), fmt.markup(_EOS)], [], (_EOS,), True)


def tts(fmt: Formatter, text: str, audio_tc: np.ndarray | None = None) -> Example:
  """TTS (pre-training): the text, a newline, then the stream speaking it."""
  _require("tts", text=text)
  prompt = [fmt.data(text), fmt.markup("\n")]
  if audio_tc is None:
    example = _example(fmt, "tts", _prompt_with_stream_open(fmt, prompt), None, [],
                       ("<|eostm|>", _EOS), True)
    return dataclasses.replace(example, stream_text_ids=fmt.data(text).ids_n)
  _require("tts", audio_tc=audio_tc)
  return _example(fmt, "tts", prompt, [fmt.stream(text, audio_tc), fmt.markup(_EOS)], [],
                  ("<|eostm|>", _EOS), True)


def speech_continuation(fmt: Formatter, prompt_tc: np.ndarray,
                        continuation_tc: np.ndarray | None = None) -> Example:
  """Speech continuation: one audio span of the prompt's frames then the continuation's; the
  prompt leaves the span open (no `<|eosp|>`) so the model goes on emitting patches until it
  closes it. `prompt_tc` must hold whole patches (a multiple of G frames) so the prompt's patches
  are the example's."""
  _require("speech_continuation", prompt_tc=prompt_tc)
  g = fmt.layout.group_size
  if len(prompt_tc) % g:
    raise TemplateError(f"speech_continuation: prompt_tc has {len(prompt_tc)} frames, not a "
                        f"multiple of the patch size {g}")
  stop = ("<|eosp|>", _EOS)
  if continuation_tc is None:
    span_kl = layout.segment_columns(AudioSegment(prompt_tc), fmt.layout)[:, :-g]  # no <|eosp|>
    n = span_kl.shape[1] // g
    return Example("speech_continuation", span_kl, np.zeros(n, bool), n,
                   tuple(fmt.tokenizer.token_to_id(s) for s in stop))
  _require("speech_continuation", continuation_tc=continuation_tc)
  span = AudioSegment(np.concatenate([prompt_tc, continuation_tc]))
  example = _example(fmt, "speech_continuation", [], [span, fmt.markup(_EOS)], [], stop, True)
  return dataclasses.replace(example, prompt_positions=1 + len(prompt_tc) // g)


def text(fmt: Formatter, prompt: str = "", continuation: str | None = None) -> Example:
  """Text-only pre-training: a document (`prompt` + `continuation`) and `<|endoftext|>`. Train
  with the whole document as `continuation`; a prompt is the text to continue."""
  prompt_segments = [fmt.data(prompt)] if prompt else []
  if continuation is None:
    return _example(fmt, "text", prompt_segments, None, [], (_EOS,), True)
  _require("text", continuation=continuation)
  return _example(fmt, "text", prompt_segments, [fmt.data(continuation), fmt.markup(_EOS)], [],
                  (_EOS,), True)


# --- SFT chat formats -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Turn:
  """One chat turn. role: "system", "user" or "assistant". parts: text (str), input audio
  (codes [T, C] ndarray) or, for an assistant's spoken reply, `Speech(text, audio_tc)`.

  An assistant turn with `thinking` opens with `<think>\\n` and its text holds the reasoning,
  `</think>` and the reply; without it a reply that starts with text gets the empty think block.
  A `trained` assistant turn is a training target although it is context (SFT data trains every
  assistant turn; the task templates train only the answer)."""

  role: str
  parts: tuple
  thinking: bool = False
  trained: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class Speech:
  """A spoken reply: its transcript and audio codes [T, C] (rendered as a stream)."""

  text: str
  audio_tc: np.ndarray


_ROLES = ("system", "user", "assistant")
_SPEECH_STOP = (_EOS, "<|eostm|>", "<|im_end|>")
_TEXT_STOP = (_EOS, "<|im_end|>")


def chat(fmt: Formatter, task: str, history: Sequence[Turn],
         answer: str | Speech | Turn | None = None, *, speech_answer: bool = False,
         thinking: bool = False) -> Example:
  """An SFT conversation: `history` (system/user/assistant turns, all context unless `trained`),
  then the assistant's answer, trained together with its `<|im_end|>`.

  The answer is a text (str), a spoken reply (`Speech`: a stream right after
  `<|im_start|>assistant\\n`) or an assistant `Turn` of several parts. A text answer follows
  `<think>\\n\\n</think>\\n`, or `<think>\\n` with `thinking` (the answer then holds the reasoning,
  `</think>` and the reply). With `answer=None` the prompt ends where the model starts answering;
  `speech_answer` says which kind to open (and, with an answer, requires speech in it).
  """
  prompt: list[Segment | _Target] = []
  for turn in history:
    prompt += _render_turn(fmt, task, turn)
  if answer is None:
    opener = _reply_opener(fmt, speech_answer, thinking)
    if speech_answer and not thinking:
      opener = _prompt_with_stream_open(fmt, opener)
    return _example(fmt, task, prompt + opener, None, [],
                    _SPEECH_STOP if speech_answer else _TEXT_STOP, False)
  if not isinstance(answer, (str, Speech, Turn)):
    raise TemplateError(f"{task}: an answer must be a str, a Speech or a Turn, got "
                        f"{type(answer).__name__}")
  reply = answer if isinstance(answer, Turn) else Turn("assistant", (answer,), thinking)
  if reply.role != "assistant":
    raise TemplateError(f"{task}: the answer must be an assistant turn, got {reply.role!r}")
  spoken = any(isinstance(p, Speech) for p in reply.parts)
  if speech_answer and not spoken:
    raise TemplateError(f"{task}: a speech answer must be a Speech, got "
                        f"{type(answer).__name__}")
  opener, body, closer = _reply(fmt, task, reply)
  return _example(fmt, task, prompt + opener, body, closer,
                  _SPEECH_STOP if spoken else _TEXT_STOP, False)


def conversation(fmt: Formatter, task: str, turns: Sequence[Turn]) -> Example:
  """SFT data: a whole conversation ending with an assistant turn; every assistant turn is a
  training target (its reply and `<|im_end|>`), nothing else is. The prompt is everything before
  the last reply."""
  if not turns or turns[-1].role != "assistant":
    raise TemplateError(f"{task}: a conversation must end with an assistant turn")
  history = [dataclasses.replace(t, trained=True) if t.role == "assistant" else t
             for t in turns[:-1]]
  return chat(fmt, task, history, turns[-1])


def _reply_opener(fmt: Formatter, speech_first: bool, thinking: bool) -> list[Segment]:
  """`<|im_start|>assistant\\n` and the think block a reply starts with (none before a stream)."""
  opener = [fmt.markup("<|im_start|>assistant\n")]
  if thinking or not speech_first:
    opener.append(fmt.markup(THINKING if thinking else NO_THINKING))
  return opener


def _reply(fmt: Formatter, task: str, turn: Turn
           ) -> tuple[list[Segment], list[Segment], list[Segment]]:
  """An assistant turn as (opener, trained body ending with `<|im_end|>`, closing newline)."""
  if not turn.parts:
    raise TemplateError(f"{task}: an assistant turn has no parts")
  opener = _reply_opener(fmt, isinstance(turn.parts[0], Speech), turn.thinking)
  body = [_render_part(fmt, task, turn.role, part) for part in turn.parts]
  return opener, body + [fmt.markup("<|im_end|>")], [fmt.markup("\n")]


def _render_turn(fmt: Formatter, task: str, turn: Turn) -> list[Segment | _Target]:
  """A context turn. A past text reply carries the empty think block, as the answers the model
  is trained to give (and the official eval's speech-to-text history) do."""
  if turn.role not in _ROLES:
    raise TemplateError(f"{task}: unknown chat role {turn.role!r}")
  if turn.role == "assistant":
    opener, body, closer = _reply(fmt, task, turn)
    return opener + ([_Target(body)] if turn.trained else body) + closer
  return [fmt.markup(f"<|im_start|>{turn.role}\n"),
          *(_render_part(fmt, task, turn.role, part) for part in turn.parts),
          fmt.markup("<|im_end|>\n")]


def _render_part(fmt: Formatter, task: str, role: str, part) -> Segment:
  if isinstance(part, str):
    _require(task, **{f"{role} text": part})
    return fmt.data(part)
  if isinstance(part, Speech):
    _require(task, speech_text=part.text, speech_audio=part.audio_tc)
    return fmt.stream(part.text, part.audio_tc)
  if isinstance(part, np.ndarray):
    _require(task, audio=part)
    return AudioSegment(part)
  raise TemplateError(f"{task}: a {role} turn part must be str, codes or Speech, got "
                      f"{type(part).__name__}")


def _pick(options: Sequence[str], rng: np.random.Generator | None) -> str:
  """A random instruction (the official prompts draw one per call); the first without an rng."""
  return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _is_zh(text: str) -> bool:
  """The official language test of TTS prompts: any CJK unified ideograph."""
  return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def asr_sft(fmt: Formatter, audio_tc: np.ndarray, transcript: str | None = None,
            rng: np.random.Generator | None = None) -> Example:
  """`<|im_start|>user\\n` audio, an ASR instruction `<|im_end|>\\n<|im_start|>assistant\\n
  <think>\\n\\n</think>\\n` -> transcript."""
  _require("asr_sft", audio_tc=audio_tc)
  user = Turn("user", (audio_tc, _pick(ASR_ZH + ASR_EN, rng)))
  return chat(fmt, "asr_sft", [user], transcript)


def tts_sft(fmt: Formatter, text: str, audio_tc: np.ndarray | None = None,
            rng: np.random.Generator | None = None) -> Example:
  """`<|im_start|>user\\n{instruction}: {text}<|im_end|>\\n<|im_start|>assistant\\n` -> the stream
  speaking `text` (the instruction in the text's language)."""
  _require("tts_sft", text=text)
  instruction = _pick(TTS_ZH if _is_zh(text) else TTS_EN, rng)
  user = Turn("user", (f"{instruction}: {text}",))
  if audio_tc is None:
    return dataclasses.replace(chat(fmt, "tts_sft", [user], None, speech_answer=True),
                               stream_text_ids=fmt.data(text).ids_n)
  return chat(fmt, "tts_sft", [user], Speech(text, audio_tc), speech_answer=True)


def instruct_tts_sft(fmt: Formatter, text: str, instruct: str,
                     audio_tc: np.ndarray | None = None, voice_tc: np.ndarray | None = None,
                     rng: np.random.Generator | None = None) -> Example:
  """Instruction-following TTS, optionally in the voice of a prompt (official `tts_sft` with
  `instruct`, and `prompt_speech`): a system turn asking for speech in the instruction's style
  (with `voice_tc`: also in the prompt's timbre, the voice audio closing the system text), the user
  turn `{instruction}: {text}({instruct})`, and the assistant's reply after `<think>\\n`. The
  official model writes its reasoning there; data without reasoning closes the block empty
  (`EMPTY_THOUGHT`, as `NO_THINKING` reads) before the stream speaking `text`."""
  _require("instruct_tts_sft", text=text, instruct=instruct)
  system = Turn("system", (STYLE_SYSTEM,) if voice_tc is None else (VOICE_STYLE_SYSTEM, voice_tc))
  user = Turn("user", (f"{_pick(TTS_ZH if _is_zh(text) else TTS_EN, rng)}: {text}({instruct})",))
  if audio_tc is None:
    return chat(fmt, "instruct_tts_sft", [system, user], None, speech_answer=True, thinking=True)
  answer = Turn("assistant", (EMPTY_THOUGHT, Speech(text, audio_tc)), thinking=True)
  return chat(fmt, "instruct_tts_sft", [system, user], answer)


def audio_understanding_sft(fmt: Formatter, audio_tc: np.ndarray, question: str,
                            answer: str | None = None, thinking: bool = False) -> Example:
  """User: audio then the question; assistant: a text answer."""
  _require("audio_understanding_sft", audio_tc=audio_tc, question=question)
  return chat(fmt, "audio_understanding_sft", [Turn("user", (audio_tc, question))], answer,
              thinking=thinking)


def spoken_dialogue_sft(fmt: Formatter, history: Sequence[Turn], answer: Speech | None = None,
                        voice_tc: np.ndarray | None = None) -> Example:
  """Speech-to-speech dialogue: optional system turn `Your voice should be:` + a voice prompt,
  then `history` (user audio turns, assistant `Speech` turns), then the spoken answer."""
  system = [] if voice_tc is None else [Turn("system", (VOICE_PROMPT, voice_tc))]
  return chat(fmt, "spoken_dialogue_sft", system + list(history), answer, speech_answer=True)


def s2t_dialogue_sft(fmt: Formatter, history: Sequence[Turn], answer: str | None = None,
                     thinking: bool = False) -> Example:
  """Speech-to-text dialogue: user audio turns, text replies."""
  return chat(fmt, "s2t_dialogue_sft", history, answer, thinking=thinking)


def text_dialogue_sft(fmt: Formatter, history: Sequence[Turn], answer: str | None = None,
                      thinking: bool = False) -> Example:
  """Text chat."""
  return chat(fmt, "text_dialogue_sft", history, answer, thinking=thinking)


# --- few-shot (Base model) formats ------------------------------------------------------------


def in_context_s2s(fmt: Formatter, instruction: str,
                   shots: Sequence[tuple[np.ndarray, np.ndarray, str]], audio_tc: np.ndarray,
                   answer: Speech | None = None) -> Example:
  """Few-shot in-context speech-to-speech (official `get_in_context_learning_s2s_prompt`):
  `[Int]:{instruction}\\n`, then per shot its input audio span, `\\n`, its output as a stream
  (transcript + audio) and ` \\n\\n`; then the query's audio span, `\\n` and the answer stream
  (the prompt ends after its `<|sostm|>`). shots: (input codes [T, C], output codes [T, C],
  output transcript). The instruction is template text, tokenised with the `\\n` in one piece as
  the official prompt is."""
  _require("in_context_s2s", instruction=instruction, audio_tc=audio_tc)
  prompt: list[Segment] = [fmt.markup(f"[Int]:{instruction}\n")]
  for i, (input_tc, output_tc, transcript) in enumerate(shots):
    _require("in_context_s2s", **{f"shot {i} input": input_tc, f"shot {i} output": output_tc,
                                  f"shot {i} transcript": transcript})
    prompt += [AudioSegment(input_tc), fmt.markup("\n"), fmt.stream(transcript, output_tc),
               fmt.markup(" \n\n")]
  prompt += [AudioSegment(audio_tc), fmt.markup("\n")]
  stop = (_EOS, "<|eostm|>")
  if answer is None:
    return _example(fmt, "in_context_s2s", _prompt_with_stream_open(fmt, prompt), None, [], stop,
                    False)
  _require("in_context_s2s", answer_text=answer.text, answer_audio=answer.audio_tc)
  return _example(fmt, "in_context_s2s", prompt, [fmt.stream(answer.text, answer.audio_tc)], [],
                  stop, False)


# --- per-phase mixtures -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Utterance:
  """What an utterance corpus gives a template: transcript, codes [T, C], labels, and a caption
  when the manifest has one (only real captions are trained; none is made up)."""

  text: str
  audio_tc: np.ndarray
  speaker: str = ""
  language: str = ""
  caption: str = ""


def sample_task(phase: str, rng: np.random.Generator,
                mixtures: Mapping[str, Mapping[str, float]] = PHASE_MIXTURES,
                utt: Utterance | None = None) -> str:
  """One task name drawn from the phase's mixture; with `utt`, from the tasks it can form (an
  utterance without a caption draws no `audio_caption`), unless that leaves none."""
  if phase not in mixtures:
    raise TemplateError(f"unknown phase {phase!r}; expected one of {sorted(mixtures)}")
  mixture = dict(mixtures[phase])
  if utt is not None and not utt.caption and sum(
      w for task, w in mixture.items() if task != "audio_caption") > 0:
    mixture.pop("audio_caption", None)
  names = sorted(mixture)
  weights = np.asarray([mixture[n] for n in names], np.float64)
  return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def render(fmt: Formatter, task: str, utt: Utterance, rng: np.random.Generator) -> Example:
  """The training example of `task` for one utterance (random choices from `rng`)."""
  if task == "interleaved":
    return interleaved(fmt, utt.text, utt.audio_tc)
  if task == "asr":
    return asr(fmt, utt.audio_tc, utt.text)
  if task == "audio_caption":
    _require(task, caption=utt.caption)  # a manifest caption only: none is made up
    return audio_caption(fmt, utt.audio_tc, utt.caption)
  if task == "tts":
    return tts(fmt, utt.text, utt.audio_tc)
  if task == "text":
    return text(fmt, "", utt.text)
  if task == "speech_continuation":
    g = fmt.layout.group_size
    n_patches = len(utt.audio_tc) // g
    if n_patches < 2:
      raise TemplateError(f"speech_continuation: {len(utt.audio_tc)} frames is under 2 patches")
    split = g * int(rng.integers(1, n_patches))  # at least one patch on each side
    return speech_continuation(fmt, utt.audio_tc[:split], utt.audio_tc[split:])
  if task == "asr_sft":
    return asr_sft(fmt, utt.audio_tc, utt.text, rng)
  if task == "tts_sft":
    return tts_sft(fmt, utt.text, utt.audio_tc, rng)
  raise TemplateError(f"task {task!r} cannot be formed from an utterance; known: "
                      f"{PRETRAIN_TASKS + SFT_TASKS}")


def example_for(fmt: Formatter, utt: Utterance, phase: str, seed: int, index: int,
                mixtures: Mapping[str, Mapping[str, float]] = PHASE_MIXTURES) -> Example:
  """The phase's example for utterance number `index`: the task and every random choice come
  from `np.random.default_rng([seed, index])`, so a record maps to the same example on any host,
  worker or restart."""
  rng = np.random.default_rng([seed, index])
  return render(fmt, sample_task(phase, rng, mixtures, utt), utt, rng)
