"""Packing: variable-length examples -> fixed-length sequences of P LLM positions.

An example is a dict with `input_ids` int32 [1 + C, G * P_i] (the layout of `lm.layout`) and
`loss_mask` [P_i] (1 where the position's token is a training target, as `lm.loss` reads it).
A packed sequence holds whole examples one after another:
  input_ids [1 + C, G * P]  the examples' columns, then padding positions;
  segment_ids [P] int32     1, 2, ... per example in the sequence, 0 on padding;
  positions [P] int32       0 .. P_i - 1 within each example (RoPE restarts), 0 on padding;
  loss_mask [P] int32       the examples' masks, 0 on padding.
Padding positions are text positions of `<|endoftext|>` (audio rows at the empty ids), so they
embed like any text token and segment id 0 keeps them out of attention and the loss.

Examples are never split: one longer than P is dropped and counted (`TOO_LONG`), unless
`split_long` cuts it into P-position pieces, each its own segment. An upstream stage that cannot
make an example passes `{"skip": reason}` instead; the packer counts it under that reason, so the
counts travel with the iterator state (`skipped(state)` reads them back).

A stream that skips most of what it reads cannot feed training, and without a limit it would spin
for ever (a skip marker fills no positions): `SkipLimits` turns it into a `SkipError` naming the
top reasons, once the skipped share passes a threshold or after windows in a row with nothing
to emit.

Packing is first-fit decreasing over a window of consecutive examples: the longest run of
examples whose positions fit in `window_sequences` sequences, placed longest first into the first
sequence with room (on utterance-length examples and 8192-position sequences, windows of 8 fill
about 98% of the positions). A window's sequences depend only on its examples, so
`PackIterDataset` checkpoints as (parent state at the window start, sequences emitted from it), a
small JSON state that resumes exactly.
"""

from __future__ import annotations

import collections
import dataclasses

import grain
import numpy as np

from mimo_jax.lm import layout as layout_lib

TOO_LONG = "example_too_long"


class SkipError(ValueError):
  """The stream skips too much to train on; the message gives the counts and the top reasons."""


@dataclasses.dataclass(frozen=True)
class SkipLimits:
  """When skipping becomes an error instead of a slow or endless wait for a batch.

  max_fraction: the share of examples skipped so far (counted once `min_examples` have been read,
    so that a few early skips are not taken for a trend) above which packing fails.
  max_empty_windows: windows in a row that give no sequence at all.
  """

  max_fraction: float = 0.5
  min_examples: int = 1000
  max_empty_windows: int = 32

  def __post_init__(self):
    if not 0 < self.max_fraction <= 1:
      raise ValueError(f"max_fraction must be in (0, 1], got {self.max_fraction}")
    if self.min_examples < 1 or self.max_empty_windows < 1:
      raise ValueError(f"min_examples and max_empty_windows must be >= 1, got "
                       f"{self.min_examples}, {self.max_empty_windows}")

  def check(self, skipped: dict[str, int], examples: int, empty_windows: int,
            seq_positions: int) -> None:
    """Raises SkipError if the counts so far pass a limit."""
    total = sum(skipped.values())
    if empty_windows >= self.max_empty_windows:
      problem = f"nothing to pack in the last {empty_windows} windows"
    elif examples >= self.min_examples and total > self.max_fraction * examples:
      problem = f"more than {self.max_fraction:.0%} of the examples skipped"
    else:
      return
    top = sorted(skipped.items(), key=lambda kv: -kv[1])[:3]
    reasons = ", ".join(f"{reason} {count}" + (f" (longer than the {seq_positions} positions of "
                                               f"a sequence)" if reason == TOO_LONG else "")
                        for reason, count in top)
    raise SkipError(f"packing: {problem}: {total} of {examples} examples skipped so far; top "
                    f"reasons: {reasons or 'none (empty examples)'}")


@dataclasses.dataclass(frozen=True)
class Packer:
  """Packs lists of examples into sequences of `seq_positions` positions."""

  seq_positions: int
  layout: layout_lib.Layout
  split_long: bool = False

  def __post_init__(self):
    if self.seq_positions < 1:
      raise ValueError(f"seq_positions must be >= 1, got {self.seq_positions}")

  def n_positions(self, example: dict) -> int:
    return example["input_ids"].shape[1] // self.layout.group_size

  def pieces(self, example: dict) -> list[dict]:
    """The example as it goes into bins: itself, or P-position pieces if `split_long`."""
    n, p, g = self.n_positions(example), self.seq_positions, self.layout.group_size
    if n <= p or not self.split_long:
      return [example]
    return [{"input_ids": example["input_ids"][:, g * s:g * (s + p)],
             "loss_mask": example["loss_mask"][s:s + p]} for s in range(0, n, p)]

  def pack(self, examples: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """First-fit decreasing packing of the examples; returns the sequences and the count of
    examples skipped per reason (skip markers, and `TOO_LONG` unless `split_long`)."""
    skipped: collections.Counter = collections.Counter()
    pieces = []
    for example in examples:
      if "skip" in example:
        skipped[example["skip"]] += 1
        continue
      for piece in self.pieces(example):
        n = self.n_positions(piece)
        if n > self.seq_positions:
          skipped[TOO_LONG] += 1
        elif n > 0:  # an empty example has nothing to train on and nothing to lose
          pieces.append((n, piece))
    bins: list[list[dict]] = []
    free: list[int] = []
    for n, piece in sorted(pieces, key=lambda x: -x[0]):  # stable: ties keep their order
      slot = next((i for i, room in enumerate(free) if room >= n), None)
      if slot is None:
        bins.append([])
        free.append(self.seq_positions)
        slot = len(bins) - 1
      bins[slot].append(piece)
      free[slot] -= n
    return [self.sequence(b) for b in bins], dict(skipped)

  def sequence(self, pieces: list[dict]) -> dict:
    """One packed sequence (see the module doc) of pieces that fit."""
    p, g = self.seq_positions, self.layout.group_size
    used = sum(self.n_positions(x) for x in pieces)
    pad_kl = layout_lib.build_sequence(
        [layout_lib.TextSegment(np.full(p - used, self.layout.tokens.endoftext, np.int32))],
        self.layout)
    input_ids = np.concatenate([x["input_ids"].astype(np.int32) for x in pieces] + [pad_kl], axis=1)
    segment_ids, positions, loss_mask = (np.zeros(p, np.int32) for _ in range(3))
    start = 0
    for i, x in enumerate(pieces):
      n = self.n_positions(x)
      segment_ids[start:start + n] = i + 1
      positions[start:start + n] = np.arange(n)
      loss_mask[start:start + n] = np.asarray(x["loss_mask"], np.int32)
      start += n
    assert input_ids.shape[1] == g * p
    return {"input_ids": input_ids, "segment_ids": segment_ids, "positions": positions,
            "loss_mask": loss_mask}


class PackIterDataset(grain.IterDataset):
  """Packs the parent's examples in windows of `window_sequences` sequences' worth of positions."""

  def __init__(self, parent: grain.IterDataset, packer: Packer, window_sequences: int = 8,
               limits: SkipLimits = SkipLimits()):
    super().__init__(parent)
    if window_sequences < 1:
      raise ValueError(f"window_sequences must be >= 1, got {window_sequences}")
    self._packer, self._window, self._limits = packer, window_sequences, limits

  def __iter__(self) -> _PackIterator:
    return _PackIterator(self._parent.__iter__(), self._packer, self._window, self._limits)


class _PackIterator(grain.DatasetIterator):
  """State: the parent's state where the current window starts, sequences emitted from that
  window, and the skip and example counts of the windows before it. The example that ends a
  window (it would overflow it) is kept, with the parent state before it, as the next window's
  first. A window also ends after as many examples as it has positions, so that a stream of skip
  markers (no positions) still ends windows and meets the skip limits."""

  def __init__(self, parent: grain.DatasetIterator, packer: Packer, window_sequences: int,
               limits: SkipLimits):
    super().__init__(parent)
    self._packer, self._limits = packer, limits
    self._window_positions = window_sequences * packer.seq_positions
    self._window_state = parent.get_state()
    self._sequences: list[dict] = []
    self._emitted = 0
    self._skipped_before: collections.Counter = collections.Counter()
    self._skipped_in_window: dict[str, int] = {}
    self._examples_before = self._examples_in_window = 0
    self._empty_windows = 0  # in a row, since this iterator started (a guard, not state)
    self._next: tuple[dict, dict] | None = None  # (example, parent state before it)

  def _positions(self, example: dict) -> int:
    return 0 if "skip" in example else self._packer.n_positions(example)

  def _read_window(self) -> bool:
    examples, positions = [], 0
    if self._next is not None:
      examples.append(self._next[0])
      positions = self._positions(self._next[0])
      self._next = None
    while True:
      state = self._parent.get_state()
      try:
        example = next(self._parent)
      except StopIteration:
        break
      n = self._positions(example)
      if examples and (positions + n > self._window_positions
                       or len(examples) >= self._window_positions):
        self._next = (example, state)
        break
      examples.append(example)
      positions += n
    self._sequences, self._skipped_in_window = self._packer.pack(examples)
    self._examples_in_window = len(examples)
    self._emitted = 0
    return bool(examples)

  def __next__(self) -> dict:
    while self._emitted >= len(self._sequences):
      self._skipped_before.update(self._skipped_in_window)
      self._examples_before += self._examples_in_window
      self._skipped_in_window, self._examples_in_window = {}, 0
      self._window_state = self._parent.get_state() if self._next is None else self._next[1]
      if not self._read_window():
        self._sequences = []
        raise StopIteration
      self._empty_windows = 0 if self._sequences else self._empty_windows + 1
      self._limits.check(self._skipped_before + collections.Counter(self._skipped_in_window),
                         self._examples_before + self._examples_in_window, self._empty_windows,
                         self._packer.seq_positions)
    self._emitted += 1
    return self._sequences[self._emitted - 1]

  def get_state(self) -> dict:
    # The current window's counts are recounted when it is re-read on restore.
    return {"parent": self._window_state, "emitted": self._emitted,
            "skipped": dict(sorted(self._skipped_before.items())),
            "examples": self._examples_before}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._window_state = state["parent"]
    self._skipped_before = collections.Counter(state["skipped"])
    # States saved before examples were counted: count from the restore on.
    self._examples_before = state.get("examples", 0)
    self._sequences, self._emitted, self._next = [], 0, None
    self._skipped_in_window, self._examples_in_window = {}, 0
    if state["emitted"]:
      self._read_window()
      self._emitted = state["emitted"]


def skipped(state: dict) -> dict[str, int]:
  """Examples skipped so far per reason, from a pipeline's iterator state (summed over the
  packers of all worker processes, wherever they nest in the state). The current window's skips
  are counted once it is done."""
  total: collections.Counter = collections.Counter()
  if isinstance(state, dict):
    if "skipped" in state and "emitted" in state:
      total.update(state["skipped"])
    for value in state.values():
      total.update(skipped(value))
  elif isinstance(state, (list, tuple)):
    for value in state:
      total.update(skipped(value))
  return dict(sorted(total.items()))
