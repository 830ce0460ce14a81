"""Packing: whole examples, separated by segment ids, positions restarting, masks carried; skips
counted; the windowed packer's iterator state resumes exactly."""

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from mimo_jax.data import packing
from mimo_jax.lm import layout as L
from mimo_jax.lm import loss as lm_loss

TOKENS = L.SpecialTokens(endoftext=500, im_start=501, im_end=502, sosp=503, eosp=504, empty=505,
                         human=506, speechlm=507, sostm=508, eostm=509, eot=510)
LAYOUT = L.Layout(TOKENS, 4, (1024, 1024) + (128,) * 6, (1025, 1025) + (129,) * 6)
P = 32


def _example(rng, n_text: int, n_frames: int) -> dict:
  """Text, then (if n_frames) an audio span: a real layout sequence with a random loss mask."""
  segments = [L.TextSegment(rng.integers(0, 500, n_text))]
  if n_frames:
    codes = np.stack([rng.integers(0, 128 if c > 1 else 1024, n_frames) for c in range(8)], 1)
    segments.append(L.AudioSegment(codes))
  ids = L.build_sequence(segments, LAYOUT)
  return {"input_ids": ids, "loss_mask": rng.random(ids.shape[1] // 4) < 0.7}


def _examples(seed: int, n: int, max_positions: int = P) -> list[dict]:
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < n:
    ex = _example(rng, int(rng.integers(1, 12)), int(rng.integers(0, 4) and rng.integers(1, 60)))
    if ex["input_ids"].shape[1] // 4 <= max_positions:
      out.append(ex)
  return out


def _segments(seq: dict) -> list[tuple[np.ndarray, np.ndarray]]:
  """(input_ids columns, loss mask) of each segment of a packed sequence, checking the layout of
  segment ids and positions on the way."""
  seg, pos = seq["segment_ids"], seq["positions"]
  used = int(np.sum(seg > 0))
  assert (seg[used:] == 0).all() and (pos[used:] == 0).all()
  assert (seq["loss_mask"][used:] == 0).all()
  ids = np.unique(seg[:used])
  np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
  out = []
  for s in ids:
    where = np.flatnonzero(seg == s)
    assert (np.diff(where) == 1).all()  # contiguous
    np.testing.assert_array_equal(pos[where], np.arange(len(where)))  # restarting
    cols = slice(4 * where[0], 4 * (where[-1] + 1))
    out.append((seq["input_ids"][:, cols], seq["loss_mask"][where]))
  pad = seq["input_ids"][:, 4 * used:]
  np.testing.assert_array_equal(
      pad, L.build_sequence([L.TextSegment(np.full(P - used, TOKENS.endoftext))], LAYOUT))
  return out


def test_packed_sequences_hold_every_example_whole_and_separated():
  examples = _examples(0, 60)
  packer = packing.Packer(P, LAYOUT)
  sequences, skipped = packer.pack(examples)
  assert skipped == {}
  found = []
  for seq in sequences:
    assert seq["input_ids"].shape == (9, 4 * P) and seq["input_ids"].dtype == np.int32
    assert {seq[k].shape for k in ("segment_ids", "positions", "loss_mask")} == {(P,)}
    found += _segments(seq)
  # A bijection: every example exactly once, bit for bit, with its own mask.
  assert len(found) == len(examples)
  keys = lambda ids, mask: (ids.tobytes(), ids.shape, np.asarray(mask, np.int32).tobytes())
  assert sorted(keys(*f) for f in found) == sorted(
      keys(e["input_ids"], e["loss_mask"]) for e in examples)
  for ids, _ in found:  # each segment is a whole, well-formed sequence on its own
    L.parse_sequence(ids, LAYOUT)
  # First fit never leaves two sequences at most half full (the later one's examples would have
  # fitted into the earlier one).
  assert sum(int(np.sum(s["segment_ids"] > 0)) <= P // 2 for s in sequences) <= 1


def test_loss_targets_never_cross_a_segment():
  sequences, _ = packing.Packer(P, LAYOUT).pack(_examples(1, 12))
  batch = {k: jnp.asarray(np.stack([s[k] for s in sequences])) for k in sequences[0]}
  keep_bp = np.asarray(lm_loss.target_mask(batch, P))
  seg_bp, mask_bp = np.stack([s["segment_ids"] for s in sequences]), batch["loss_mask"]
  expected = np.zeros_like(keep_bp)
  expected[:, :-1] = (seg_bp[:, :-1] == seg_bp[:, 1:]) & (seg_bp[:, 1:] > 0) & (mask_bp[:, 1:] > 0)
  np.testing.assert_array_equal(keep_bp, expected)
  ends = np.flatnonzero(np.diff(seg_bp[0]) != 0)
  assert len(ends) and not keep_bp[0, ends].any()  # a segment's last position predicts nothing


def test_long_examples_are_dropped_and_counted_or_split_when_configured():
  rng = np.random.default_rng(2)
  long = _example(rng, 20, 150)  # 20 + 1 + 38 + 1 = 60 positions
  short = _examples(3, 3)
  examples = [short[0], long, {"skip": "template_failed:asr"}, short[1], short[2]]
  sequences, skipped = packing.Packer(P, LAYOUT).pack(examples)
  assert skipped == {packing.TOO_LONG: 1, "template_failed:asr": 1}
  assert sum(len(_segments(s)) for s in sequences) == 3
  sequences, skipped = packing.Packer(P, LAYOUT, split_long=True).pack([long])
  assert skipped == {}
  pieces = [seg for s in sequences for seg in _segments(s)]
  assert [p[0].shape[1] // 4 for p in pieces] == [32, 28]
  np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces], axis=1), long["input_ids"])
  np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces]), long["loss_mask"])


def _stream(examples, window_sequences):
  ds = grain.MapDataset.source(examples).map(lambda x: x).to_iter_dataset()
  return packing.PackIterDataset(ds, packing.Packer(P, LAYOUT), window_sequences)


def _same(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stop", [0, 1, 3, 7])
def test_pack_iterator_state_resumes_exactly(stop):
  examples = _examples(4, 40) + [{"skip": "bad"}] * 3
  rng = np.random.default_rng(5)
  examples = [examples[i] for i in rng.permutation(len(examples))]
  full = list(_stream(examples, window_sequences=3))
  it = iter(_stream(examples, window_sequences=3))
  for _ in range(stop):
    next(it)
  state = it.get_state()
  resumed = iter(_stream(examples, window_sequences=3))
  resumed.set_state(state)
  rest = list(resumed)
  assert len(rest) == len(full) - stop
  assert all(_same(a, b) for a, b in zip(rest, full[stop:]))
  assert packing.skipped(resumed.get_state()) == {"bad": 3}  # counted once across the restore
  with pytest.raises(ValueError, match="window_sequences"):
    packing.PackIterDataset(grain.MapDataset.range(3).to_iter_dataset(),
                            packing.Packer(P, LAYOUT), 0)
