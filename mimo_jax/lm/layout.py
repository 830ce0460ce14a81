"""The MiMo-Audio sequence layout: `[1 + C, G * P]` id arrays built from segments and read back.

One sample is an int32 array with one text row and C audio rows (spec §2.2). Every LLM position p
owns the G columns `G*p .. G*p + G-1`:
- text position: row 0 = the text token at column G*p and the filler -100 at the other G-1
  columns (never read); rows 1..C = each channel's empty id (it embeds to zero);
- audio position (one patch of G frames at 25 Hz): row 0 = `<|empty|>` at column G*p, filler
  elsewhere; rows 1..C = the G frames' codes.

Segments mirror the official builders (`process_speechdata.py`): `TextSegment` (one position per
token), `AudioSegment` (an input speech span, wrapped in `<|sosp|>` ... `<|eosp|>`) and
`StreamSegment` (an output stream: `<|sostm|>`, then text chunks of 5 tokens and audio chunks of
5 patches alternating, text first, `<|eot|>` after the last text token, the leftover chunks,
`<|eostm|>`). `parse_sequence` is the inverse. Host-side data code, so everything is numpy.

Shape suffixes: n text tokens, t audio frames, c audio channels, p LLM positions, g frames of one
patch, k layout rows (1 + C), l layout columns (G * P).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tokenizers

from mimo_jax.config import MimoAudioConfig

# Row 0 value at the G-1 columns of every position that are not its text slot.
FILLER = -100

# SpecialTokens field -> the string the text tokenizer knows it by (the official `MimoAudio`
# looks up the same strings; their ids differ between tokenizer builds, so none is hard-coded).
SPECIAL_STRINGS = {
    "endoftext": "<|endoftext|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "sosp": "<|sosp|>",
    "eosp": "<|eosp|>",
    "empty": "<|empty|>",
    "human": "<|Human|>",
    "speechlm": "<|SpeechLM|>",
    "sostm": "<|sostm|>",
    "eostm": "<|eostm|>",
    "eot": "<|eot|>",
}


class LayoutError(ValueError):
  """A segment or sequence does not fit the layout; the message says which part and why."""


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Ids of the chat and speech special tokens in one text tokenizer."""

  endoftext: int
  im_start: int
  im_end: int
  sosp: int
  eosp: int
  empty: int
  human: int
  speechlm: int
  sostm: int
  eostm: int
  eot: int

  @classmethod
  def from_tokenizer(cls, tokenizer: tokenizers.Tokenizer) -> SpecialTokens:
    ids = {}
    for name, string in SPECIAL_STRINGS.items():
      ids[name] = tokenizer.token_to_id(string)
      if ids[name] is None:
        raise LayoutError(f"the text tokenizer has no token {string!r} (SpecialTokens.{name}); "
                          f"add it as a special token, as the official MimoAudio does")
    return cls(**ids)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Everything the layout depends on: special-token ids, patch size, per-channel audio ids."""

  tokens: SpecialTokens
  group_size: int
  audio_empty_ids: tuple[int, ...]
  audio_vocab_sizes: tuple[int, ...]
  text_chunk: int = 5  # text tokens per chunk of an output stream (official default)
  audio_chunk: int = 5  # patches per chunk of an output stream (official default)

  @classmethod
  def from_config(cls, cfg: MimoAudioConfig, tokenizer: tokenizers.Tokenizer) -> Layout:
    return cls(tokens=SpecialTokens.from_tokenizer(tokenizer), group_size=cfg.group_size,
               audio_empty_ids=cfg.speech_zeroemb_idx, audio_vocab_sizes=cfg.speech_vocab_size)

  @property
  def n_channels(self) -> int:
    return len(self.audio_empty_ids)


@dataclasses.dataclass(frozen=True, eq=False)
class TextSegment:
  """Text tokens, one LLM position each. May hold `<|sostm|>` (a prompt that opens a stream)."""

  ids_n: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, "ids_n", _int_array(self.ids_n, 1, "TextSegment.ids_n"))


@dataclasses.dataclass(frozen=True, eq=False)
class AudioSegment:
  """An input speech span: codes [T, C] frame-major, T padded to a multiple of G when built."""

  codes_tc: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, "codes_tc", _int_array(self.codes_tc, 2, "AudioSegment.codes_tc"))


@dataclasses.dataclass(frozen=True, eq=False)
class StreamSegment:
  """An interleaved output stream: the text it speaks and its audio codes [T, C]."""

  ids_n: np.ndarray
  codes_tc: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, "ids_n", _int_array(self.ids_n, 1, "StreamSegment.ids_n"))
    object.__setattr__(self, "codes_tc", _int_array(self.codes_tc, 2, "StreamSegment.codes_tc"))


Segment = TextSegment | AudioSegment | StreamSegment


def encode_text(tokenizer: tokenizers.Tokenizer, text: str) -> np.ndarray:
  """Token ids [n] of `text` with no special tokens inserted, like the official builders; the
  `<|...|>` strings inside `text` still map to their own ids."""
  return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, np.int32)


def pad_frames(codes_tc: np.ndarray, group_size: int) -> np.ndarray:
  """Codes padded to a whole number of patches by repeating the last frame (official
  `preprocess_input`). The layout keeps no unpadded length, so these frames come back on reading."""
  pad = -len(codes_tc) % group_size
  return np.concatenate([codes_tc, np.repeat(codes_tc[-1:], pad, axis=0)])


# --- building ---------------------------------------------------------------------------------


def build_sequence(segments: list[Segment], layout: Layout) -> np.ndarray:
  """The int32 [1 + C, G * P] sequence of the segments in order (official `get_input_ids`)."""
  empty_kl = np.zeros((1 + layout.n_channels, 0), np.int32)
  return np.concatenate([empty_kl] + [segment_columns(s, layout) for s in segments], axis=1)


def segment_columns(segment: Segment, layout: Layout) -> np.ndarray:
  """The int32 [1 + C, G * P] columns of one segment (official `to_input_id`)."""
  tok = layout.tokens
  if isinstance(segment, TextSegment):
    _check_text(segment.ids_n, layout, "TextSegment", (tok.empty, tok.sosp, tok.eosp, tok.eostm))
    return _text_columns(segment.ids_n, layout)
  if isinstance(segment, AudioSegment):
    _check_codes(segment.codes_tc, layout, "AudioSegment")
    return np.concatenate([_text_columns([tok.sosp], layout),
                           _audio_columns(segment.codes_tc, layout),
                           _text_columns([tok.eosp], layout)], axis=1)
  if isinstance(segment, StreamSegment):
    return _stream_columns(segment, layout)
  raise LayoutError(f"not a segment: {type(segment).__name__}")


def _stream_columns(segment: StreamSegment, layout: Layout) -> np.ndarray:
  tok = layout.tokens
  _check_text(segment.ids_n, layout, "StreamSegment",
              (tok.empty, tok.sosp, tok.eosp, tok.sostm, tok.eostm))
  _check_codes(segment.codes_tc, layout, "StreamSegment")
  ids_n = np.append(segment.ids_n, np.int32(tok.eot))
  text_chunks = np.split(ids_n, np.arange(layout.text_chunk, len(ids_n), layout.text_chunk))
  chunk_frames = layout.audio_chunk * layout.group_size
  audio_chunks = np.split(segment.codes_tc,
                          np.arange(chunk_frames, len(segment.codes_tc), chunk_frames))
  parts = [_text_columns([tok.sostm], layout)]
  # Chunk i of text, then chunk i of audio; once one side runs out the other's leftovers follow
  # in order, which is where the official loops put them. Only the last audio chunk can be short
  # of whole patches, so padding it alone equals padding the whole clip.
  for i in range(max(len(text_chunks), len(audio_chunks))):
    if i < len(text_chunks):
      parts.append(_text_columns(text_chunks[i], layout))
    if i < len(audio_chunks):
      parts.append(_audio_columns(audio_chunks[i], layout))
  parts.append(_text_columns([tok.eostm], layout))
  return np.concatenate(parts, axis=1)


def _text_columns(ids_n, layout: Layout) -> np.ndarray:
  g = layout.group_size
  out_kl = np.full((1 + layout.n_channels, g * len(ids_n)), FILLER, np.int32)
  out_kl[0, ::g] = ids_n
  out_kl[1:] = np.asarray(layout.audio_empty_ids, np.int32)[:, None]
  return out_kl


def _audio_columns(codes_tc: np.ndarray, layout: Layout) -> np.ndarray:
  codes_tc = pad_frames(codes_tc, layout.group_size)
  out_kl = np.full((1 + layout.n_channels, len(codes_tc)), FILLER, np.int32)
  out_kl[0, ::layout.group_size] = layout.tokens.empty
  out_kl[1:] = codes_tc.T
  return out_kl


def _check_text(ids_n: np.ndarray, layout: Layout, where: str, forbidden: tuple[int, ...]):
  """Rejects ids that `parse_sequence` would read as structure, so every build reads back."""
  if (ids_n < 0).any():
    raise LayoutError(f"{where}: negative token id {ids_n.min()}")
  for token in forbidden:
    if (ids_n == token).any():
      raise LayoutError(f"{where}: text holds {_name(token, layout)} (id {token}), which the "
                        f"layout uses as structure there")


def _check_codes(codes_tc: np.ndarray, layout: Layout, where: str):
  """Codes must be real codebook entries: an empty id would embed to zero and an out-of-range id
  would be clamped silently by a JAX gather."""
  if codes_tc.shape[1] != layout.n_channels:
    raise LayoutError(f"{where}: codes need {layout.n_channels} channels, got shape "
                      f"{codes_tc.shape}")
  for ch, (empty, size) in enumerate(zip(layout.audio_empty_ids, layout.audio_vocab_sizes)):
    col_t = codes_tc[:, ch]
    bad_t = (col_t < 0) | (col_t >= size) | (col_t == empty)
    if bad_t.any():
      raise LayoutError(f"{where}: channel {ch} frame {np.argmax(bad_t)} has code "
                        f"{col_t[np.argmax(bad_t)]}: outside [0, {size}) or the empty id {empty}")


def _int_array(value, ndim: int, where: str) -> np.ndarray:
  array = np.asarray(value)
  if array.size == 0:
    array = array.astype(np.int32)
  if array.ndim != ndim or not np.issubdtype(array.dtype, np.integer):
    raise LayoutError(f"{where}: expected a {ndim}-d integer array, got {array.dtype} "
                      f"{array.shape}")
  return array.astype(np.int32)


# --- reading ----------------------------------------------------------------------------------


def text_tokens(ids_kl: np.ndarray, layout: Layout) -> np.ndarray:
  """Row-0 token of every LLM position, [P]; audio positions read `<|empty|>`."""
  return ids_kl[0, ::layout.group_size]


def patch_codes(ids_kl: np.ndarray, layout: Layout) -> np.ndarray:
  """Audio rows regrouped per LLM position, [P, G, C]; text positions hold the empty ids."""
  c, g = layout.n_channels, layout.group_size
  return ids_kl[1:].T.reshape(-1, g, c)


def parse_sequence(ids_kl: np.ndarray, layout: Layout) -> list[Segment]:
  """The segments a well-formed sequence was built from.

  Exact inverse of `build_sequence` up to what the layout cannot record: adjacent text segments
  come back as one (empty ones vanish), and audio comes back with its pad frames (`pad_frames`):
  T_pad = ceil(T / G) * G frames, the original T first, then copies of the last one. A
  `<|sostm|>` starts a stream only when a `<|eostm|>` follows before the next `<|sostm|>`;
  otherwise it is text (a prompt that leaves the stream to the model). A stream still being
  generated (no `<|eostm|>` yet) does not parse: read it with `text_tokens` / `patch_codes`.
  """
  _check_sequence(ids_kl, layout)
  tok = layout.tokens
  tokens_p, codes_pgc = text_tokens(ids_kl, layout), patch_codes(ids_kl, layout)
  segments: list[Segment] = []
  text: list[int] = []
  p = 0
  while p < len(tokens_p):
    end = _segment_end(tokens_p, p, layout)
    if end is None:
      text.append(int(tokens_p[p]))
      p += 1
      continue
    if text:
      segments.append(TextSegment(text))
      text = []
    inner_p = tokens_p[p + 1:end]
    inner_codes_tc = codes_pgc[p + 1:end][inner_p == tok.empty].reshape(-1, layout.n_channels)
    if tokens_p[p] == tok.sosp:
      segments.append(AudioSegment(inner_codes_tc))
    else:
      segments.append(StreamSegment(_stream_text(inner_p, layout, p), inner_codes_tc))
    p = end + 1
  if text:
    segments.append(TextSegment(text))
  return segments


def _segment_end(tokens_p: np.ndarray, p: int, layout: Layout) -> int | None:
  """Position of the `<|eosp|>` / `<|eostm|>` closing a span or stream opened at p; None when
  position p is plain text. Audio or closers outside any span are errors."""
  tok = layout.tokens
  token = tokens_p[p]
  if token in (tok.empty, tok.eosp, tok.eostm):
    raise LayoutError(f"position {p}: {_name(token, layout)} outside an input span or stream")
  if token == tok.sosp:
    for q in range(p + 1, len(tokens_p)):
      if tokens_p[q] == tok.eosp:
        return q
      if tokens_p[q] != tok.empty:
        raise LayoutError(f"position {q}: the input span opened at {p} holds "
                          f"{_name(tokens_p[q], layout)} before its <|eosp|>")
    raise LayoutError(f"position {p}: the input span has no <|eosp|>")
  if token == tok.sostm:
    for q in range(p + 1, len(tokens_p)):
      if tokens_p[q] in (tok.sostm, tok.eostm):
        return q if tokens_p[q] == tok.eostm else None
  return None


def _stream_text(inner_p: np.ndarray, layout: Layout, p: int) -> np.ndarray:
  """Text of the stream opened at p: its text positions in order, less the closing `<|eot|>`."""
  tok = layout.tokens
  text_n = inner_p[inner_p != tok.empty]
  if np.isin(text_n, (tok.sosp, tok.eosp)).any():
    raise LayoutError(f"position {p}: the stream holds an input-span marker")
  if len(text_n) == 0 or text_n[-1] != tok.eot:
    raise LayoutError(f"position {p}: the stream's text does not end with <|eot|>")
  return text_n[:-1]


def _check_sequence(ids_kl: np.ndarray, layout: Layout):
  """Everything `parse_sequence` does not read (fillers, empty ids of text positions) must hold
  its fixed value, so a sequence that parses is exactly the build of what it parses to."""
  k, g = 1 + layout.n_channels, layout.group_size
  if ids_kl.ndim != 2 or ids_kl.shape[0] != k or ids_kl.shape[1] % g:
    raise LayoutError(f"sequence: expected shape [{k}, {g} * P], got {ids_kl.shape}")
  fill_l = np.arange(ids_kl.shape[1]) % g != 0
  if (ids_kl[0, fill_l] != FILLER).any():
    col = np.flatnonzero(fill_l & (ids_kl[0] != FILLER))[0]
    raise LayoutError(f"sequence: column {col} of the text row is {ids_kl[0, col]}, not the "
                      f"filler {FILLER}")
  audio_p = text_tokens(ids_kl, layout) == layout.tokens.empty
  codes_pgc = patch_codes(ids_kl, layout)
  text_ok_p = (codes_pgc == np.asarray(layout.audio_empty_ids)).all(axis=(1, 2))
  if not (audio_p | text_ok_p).all():
    p = np.flatnonzero(~(audio_p | text_ok_p))[0]
    raise LayoutError(f"sequence: text position {p} has audio rows that are not the empty ids")
  _check_codes(codes_pgc[audio_p].reshape(-1, layout.n_channels), layout, "sequence")


def _name(token: int, layout: Layout) -> str:
  for field, string in SPECIAL_STRINGS.items():
    if getattr(layout.tokens, field) == token:
      return string
  return f"token {token}"
