"""Continuous batching below HTTP: requests put into slots while other rows decode make exactly
what each makes alone in a fresh batch (`generate.generate`), also after the KV ring wraps; the
loop frees the slot of a cancelled or timed-out request."""

import threading
import time

import numpy as np
import pytest

from mimo_jax.data import templates
from mimo_jax.lm import generate as gen
from mimo_jax.lm.sampling import SamplerConfig
from mimo_jax.serve import slots
from mimo_jax.serve.loop import QueueFull, ServingLoop
from tests.serve.conftest import EMPTY


def _requests(mimo):
  """TTS prompts of different lengths, sampled (own seeds) or greedy, with different limits."""
  texts = ["hi", "good morning to you all", "one two three", "the end"]
  sampled = SamplerConfig(temperature=0.9, top_p=0.95)
  return [mimo.request(templates.tts_sft(mimo.fmt, t), None, 6 + 3 * i, 0, 10 + i,
                        sampled if i % 2 else None, sampled if i % 2 else None, "free")
          for i, t in enumerate(texts)]


def test_rows_inserted_while_others_decode_match_a_fresh_batch(speaking):
  unique = _requests(speaking)
  shape = slots.Shape(slots=2, max_prompt=gen.bucket(max(r.prompt_kl.shape[1] // 4
                                                         for r in unique)), max_new=16)
  alone = [gen.generate(speaking.params, speaking.cfg, [r], empty_id=EMPTY,
                        prompt_positions=shape.max_prompt, max_new=shape.max_new)[0]
           for r in unique] * 2
  requests = unique * 2  # enough steps for the ring to wrap
  decoder = slots.SlotDecoder(speaking.params, speaking.cfg, shape, empty_id=EMPTY,
                              chunk_steps=3)
  made = {i: [] for i in range(len(requests))}
  pending, rows = list(enumerate(requests)), {}
  while pending or rows:
    # One new request per chunk at most: insertions land while the other row is mid-answer.
    free = [r for r in range(shape.slots) if r not in rows]
    if pending and free:
      i, request = pending.pop(0)
      decoder.insert(free[0], request)
      rows[free[0]] = i
    for row, piece, finished in decoder.advance():
      made[rows[row]].append(piece)
      if finished:
        del rows[row]
  # The ring's write index starts after the idle rows' prompt positions: it has come round.
  assert int(decoder._slots.state.step) > shape.max_new, "the test must wrap the ring"
  for i, result in enumerate(alone):
    text_n = np.concatenate([p.text_n for p in made[i]])
    codes_ngc = np.concatenate([p.codes_ngc for p in made[i]])
    np.testing.assert_array_equal(text_n, result.tokens_kl[0, ::4], err_msg=f"request {i}")
    np.testing.assert_array_equal(codes_ngc.reshape(-1, 8).T, result.tokens_kl[1:],
                                  err_msg=f"request {i}")
    assert made[i][-1].stopped == result.stopped


class _Model:
  """A stand-in `SlotModel`: each request is a number of chunks to make."""

  slots = 1

  def __init__(self):
    self.live, self.released, self.gate = {}, [], threading.Event()

  def insert(self, row, request):
    if request < 0:
      raise ValueError("negative")
    self.live[row] = request

  def release(self, row):
    self.released.append(row)
    del self.live[row]

  def advance(self):
    self.gate.wait(5)
    out = []
    for row in list(self.live):
      self.live[row] -= 1
      out.append((row, "chunk", self.live[row] == 0))
      if self.live[row] == 0:
        del self.live[row]
    return out


def test_loop_cancels_times_out_refuses_and_reports_insert_errors():
  model, events = _Model(), {}
  loop = ServingLoop(model, max_queue=1).start()
  done = threading.Event()

  def record(name):
    def on_event(kind, payload):
      events.setdefault(name, []).append(kind if kind != "error" else f"error:{payload}")
      if kind != "piece":
        done.set()
    return on_event

  try:
    long = loop.submit(10**9, 60, record("long"))
    _wait(lambda: loop.stats.busy == 1)  # it took the only slot
    queued = loop.submit(2, 60, record("queued"))
    with pytest.raises(QueueFull):
      loop.submit(1, 60, record("refused"))
    model.gate.set()
    loop.cancel(long)
    _wait(lambda: "done" in events.get("queued", []))
    assert events["long"][-1] == "cancelled" and model.released == [0]
    assert events["queued"] == ["piece", "done"]
    del queued
    done.clear()
    loop.submit(-1, 60, record("bad"))
    _wait(done.is_set)
    assert events["bad"] == ["error:negative"]
    done.clear()
    loop.submit(10**9, 0.2, record("slow"))
    _wait(lambda: "timeout" in events.get("slow", []))
    assert loop.stats.ended == {"cancelled": 1, "done": 1, "error": 1, "timeout": 1}
    assert loop.stats.busy == 0
  finally:
    loop.stop()


def _wait(condition, timeout_s=30.0):
  end = time.monotonic() + timeout_s
  while not condition():
    assert time.monotonic() < end, "timed out waiting"
    time.sleep(0.01)


def test_a_burst_before_admission_is_not_refused_while_rows_are_free():
  """Requests that free rows will take do not count against the queue: with the loop thread not
  yet run, slots + max_queue requests are accepted and only the next one is refused."""
  loop = ServingLoop(_Model(), max_queue=1)  # not started: nothing is admitted
  for request in range(_Model.slots + 1):
    loop.submit(request, 60, lambda kind, payload: None)
  with pytest.raises(QueueFull):
    loop.submit(0, 60, lambda kind, payload: None)
