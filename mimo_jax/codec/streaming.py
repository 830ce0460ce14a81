"""Streaming decode: waveform from a growing code stream, chunk by chunk (official
`MiMoAudioTokenizer.streaming_decode` semantics, spec §1.5).

Axis letters: t code frames, q RVQ stages, s samples.

Each step decodes [left context | new codes] as one sequence and emits the audio of the frames not
yet emitted, except the last `right_overlap` frames, which wait for more right context (the
vocoder looks ahead and the ISTFT overlaps). The context kept for the next step is the last
`left_overlap` frames. The final step (`last=True`) emits everything left.

Because the decoder's GroupNorms take statistics over the whole decoded window and the window
slides, streamed audio is close to, not equal to, a one-shot decode; `tests/codec/test_streaming.py`
and `experiments/bench/codec_cpu.py` measure the difference.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from mimo_jax.codec import api
from mimo_jax.codec.config import CodecConfig


@dataclasses.dataclass(frozen=True)
class StreamingConfig:
  left_overlap: int = 250  # 10 s of left context (code frames)
  right_overlap: int = 40  # 1.6 s held back until more codes arrive

  def __post_init__(self):
    if self.right_overlap < 0 or self.left_overlap <= self.right_overlap:
      raise ValueError(f"left_overlap: must exceed right_overlap >= 0, got {self.left_overlap} "
                       f"and {self.right_overlap}")


class StreamState(NamedTuple):
  context_tq: np.ndarray | None  # codes kept as left context (None before the first step)
  emitted: int  # frames of context_tq whose audio was already emitted


def start() -> StreamState:
  return StreamState(None, 0)


def step(params, cfg: CodecConfig, state: StreamState, codes_tq, *, last: bool = False,
         scfg: StreamingConfig = StreamingConfig()) -> tuple[np.ndarray, StreamState]:
  """Appends codes [t, q] to the stream; returns the newly final audio (possibly empty)."""
  codes_tq = np.asarray(codes_tq)
  window_tq = codes_tq if state.context_tq is None else np.concatenate([state.context_tq,
                                                                         codes_tq])
  n, spf = len(window_tq), cfg.samples_per_frame
  if last:
    wav_s = api.decode(params, cfg, window_tq) if n else np.zeros(0, np.float32)
    return wav_s[state.emitted * spf:], StreamState(window_tq[n:], 0)
  if n <= scfg.right_overlap:
    return np.zeros(0, np.float32), StreamState(window_tq, state.emitted)
  end = n - scfg.right_overlap
  wav_s = api.decode(params, cfg, window_tq)[state.emitted * spf:end * spf]
  drop = max(0, n - scfg.left_overlap)
  return wav_s, StreamState(window_tq[drop:], end - drop)


def stream(params, cfg: CodecConfig, codes_tq, chunk: int,
           scfg: StreamingConfig = StreamingConfig()) -> list[np.ndarray]:
  """Feeds codes in chunks of `chunk` frames (the last step flagged); returns each step's audio."""
  codes_tq = np.asarray(codes_tq)
  state, pieces = start(), []
  for first in range(0, len(codes_tq), chunk):
    wav_s, state = step(params, cfg, state, codes_tq[first:first + chunk],
                        last=first + chunk >= len(codes_tq), scfg=scfg)
    pieces.append(wav_s)
  return pieces
