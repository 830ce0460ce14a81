"""A stream that skips too much fails with its top reasons instead of spinning for ever."""

import threading

import grain
import numpy as np
import pytest

from mimo_jax.data import packing
from tests.datapipe.test_packing import LAYOUT, P, _example, _examples

TIMEOUT_S = 30  # each call ends in well under a second; today's code spun for ever here


def _next_within(it, timeout=TIMEOUT_S):
  """next(it), or a test failure if it does not return in time (a daemon thread is left to spin
  where the code under test hangs)."""
  out = {}

  def run():
    try:
      out["value"] = next(it)
    except BaseException as e:  # noqa: BLE001  (handed to the test)
      out["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(timeout)
  assert not thread.is_alive(), f"next() still running after {timeout}s"
  if "error" in out:
    raise out["error"]
  return out["value"]


def _forever(examples, limits=packing.SkipLimits(), window_sequences=2):
  ds = grain.MapDataset.source(examples).repeat().to_iter_dataset()
  return iter(packing.PackIterDataset(ds, packing.Packer(P, LAYOUT), window_sequences, limits))


def test_an_endless_stream_of_skip_markers_fails_naming_the_reason():
  it = _forever([{"skip": "template_failed:asr"}, {"skip": "template_failed:asr"},
                 {"skip": "no_codes"}], packing.SkipLimits(max_empty_windows=4))
  with pytest.raises(packing.SkipError, match=r"nothing to pack in the last 4 windows: \d+ of "
                                              r"\d+ examples skipped so far; top reasons: "
                                              r"template_failed:asr \d+, no_codes \d+"):
    _next_within(it)


def test_examples_all_too_long_fail_naming_the_sequence_length():
  rng = np.random.default_rng(1)
  too_long = [_example(rng, 20, 150) for _ in range(3)]  # 60 positions each
  it = _forever(too_long, packing.SkipLimits(max_empty_windows=5))
  with pytest.raises(packing.SkipError, match=rf"example_too_long 5 \(longer than the {P} "
                                              rf"positions of a sequence\)"):
    _next_within(it)


@pytest.mark.parametrize("share, fails", [(0.6, True), (0.4, False)])
def test_the_skipped_share_is_checked_once_enough_examples_were_read(share, fails):
  good = _examples(2, 50)
  rng = np.random.default_rng(0)
  stream = [{"skip": "bad"} if rng.random() < share else good[i % 50] for i in range(3000)]
  limits = packing.SkipLimits(max_fraction=0.5, min_examples=1000)
  ds = grain.MapDataset.source(stream).to_iter_dataset()
  it = iter(packing.PackIterDataset(ds, packing.Packer(P, LAYOUT), 2, limits))
  if fails:
    with pytest.raises(packing.SkipError, match=r"more than 50% of the examples skipped: \d+ of "
                                                r"1\d\d\d examples skipped so far; top reasons: "
                                                r"bad \d+"):
      list(it)
  else:
    assert list(it)
    state = it.get_state()
    assert state["examples"] == 3000 and packing.skipped(state)["bad"] == sum(
        "skip" in x for x in stream)


def test_examples_are_counted_across_a_restore():
  stream = _examples(4, 40) + [{"skip": "bad"}] * 3
  make = lambda: iter(packing.PackIterDataset(grain.MapDataset.source(stream).to_iter_dataset(),
                                              packing.Packer(P, LAYOUT), 3))
  it = make()
  next(it), next(it)
  resumed = make()
  resumed.set_state(it.get_state())
  list(resumed)
  assert resumed.get_state()["examples"] == 43


def test_bad_limits_are_refused():
  with pytest.raises(ValueError, match="max_fraction"):
    packing.SkipLimits(max_fraction=0)
  with pytest.raises(ValueError, match="max_empty_windows"):
    packing.SkipLimits(max_empty_windows=0)


def test_unreadable_records_are_skipped_and_empty_shards_refused(tmp_path):
  from mimo_jax.data import pipeline, pretokenize
  from mimo_jax.lm import layout as L

  def example_fn(record, index):
    del index
    return {"input_ids": L.build_sequence([L.TextSegment([int(record["key"])])], LAYOUT),
            "loss_mask": np.ones(1, bool)}

  good = [pretokenize.serialize({"key": str(i)}) for i in range(5)]
  pretokenize.write_shard(tmp_path / "a.array_record", good + [b"\xc1 not msgpack"])
  ds = pipeline.make_dataset([str(tmp_path / "a.array_record")], example_fn,
                             packing.Packer(P, LAYOUT), batch_size=1, seed=0, num_epochs=1,
                             shuffle=False)
  it = iter(ds)
  assert len(list(it)) == 1  # the five one-position examples share a sequence
  assert packing.skipped(it.get_state()) == {pipeline.RECORD_UNREADABLE: 1}
  pretokenize.write_shard(tmp_path / "empty.array_record", [])
  with pytest.raises(ValueError, match=r"the shards hold 0 records, fewer than the 1 processes"):
    pipeline.make_dataset([str(tmp_path / "empty.array_record")], example_fn,
                          packing.Packer(P, LAYOUT), batch_size=1, seed=0)
