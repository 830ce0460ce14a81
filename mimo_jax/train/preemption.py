"""SIGTERM (a preemption notice, `timeout`, a scheduler) ends a run promptly wherever it waits.

A training run (the LM's and the codec's) holds one `Preemption` for its whole life. SIGTERM
then means:

- during a step: `requested` is set; the loop checks it after the step (`agreed`: every process
  together), saves a checkpoint and exits 0;
- inside `interruptible()` (waiting for a batch, setting up): `Preempted` is raised at once, so
  the loop stops waiting and saves what is consistent (a data stall never blocks a preemption);
- while the main thread is stuck outside Python (an XLA compile, a hung read or save), Python
  runs no signal handler at all: a watchdog thread, woken by the signal itself through
  `signal.set_wakeup_fd`, ends the process with status 143 (SIGTERM's own) if it is still
  running `grace_s` seconds after the signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

EXIT_STUCK = 128 + signal.SIGTERM
GRACE_S = 120.0  # the default time from SIGTERM to the watchdog's exit


class Preempted(BaseException):
  """SIGTERM inside `Preemption.interruptible()`. A BaseException, like KeyboardInterrupt, so that
  a library's `except Exception` on the way up cannot swallow it."""


class Preemption:
  """SIGTERM handling for one run; `close()` puts the previous handler back."""

  def __init__(self, grace_s: float):
    self.requested = False
    self._grace_s = grace_s
    self._interruptible = 0
    self._closed = threading.Event()
    self._read_fd, self._write_fd = os.pipe()
    os.set_blocking(self._write_fd, False)
    self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    threading.Thread(target=self._watch, name="sigterm-watchdog", daemon=True).start()

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.requested = True
    if self._interruptible:
      raise Preempted("SIGTERM")

  def _watch(self) -> None:
    # The C-level handler writes each signal's number to the wakeup fd even while the main
    # thread is inside XLA, where no Python handler can run.
    with os.fdopen(self._read_fd, "rb", buffering=0) as wakeups:
      while signal.SIGTERM not in (data := wakeups.read(64)):
        if not data:  # closed: the run is over
          return
    if self._closed.wait(self._grace_s):
      return
    logging.error("SIGTERM %.0f s ago and the run has not exited (stuck in a compile, read or "
                  "save): ending it with status %d; its latest complete checkpoint stands",
                  self._grace_s, EXIT_STUCK)
    logging.flush()
    os._exit(EXIT_STUCK)  # pylint: disable=protected-access  (no cleanup can run in time)

  @contextlib.contextmanager
  def interruptible(self) -> Iterator[None]:
    """A wait that SIGTERM may cut short with `Preempted` (also if it already came)."""
    self._interruptible += 1  # before the check: a signal in between still raises
    try:
      if self.requested:
        raise Preempted("SIGTERM")
      yield
    finally:
      self._interruptible -= 1

  @contextlib.contextmanager
  def shielded(self) -> Iterator[None]:
    """Work that SIGTERM must not cut short (steps, saves) inside an interruptible stretch: the
    signal only sets `requested` there."""
    depth, self._interruptible = self._interruptible, 0
    try:
      yield
    finally:
      self._interruptible = depth

  def next(self, iterator: Any) -> Any | None:
    """The iterator's next item, waited for interruptibly; None if SIGTERM cut the wait short.
    The iterator is then put back where it was (a read cut short can leave it mid-window), so
    that a checkpoint saved now holds a position that matches the state. With several processes
    `Preempted` propagates instead: the others may be inside a step, where a collective save
    would wait for ever."""
    before = iterator.get_state()
    try:
      with self.interruptible():
        return next(iterator)
    except Preempted:
      if iterator.get_state() != before:
        iterator.set_state(before)
      if jax.process_count() > 1:
        logging.error("SIGTERM while waiting for data: steps after the latest checkpoint are "
                      "lost")
        raise
      return None

  def agreed(self) -> bool:
    """Whether any process got SIGTERM; every process must call it at the same point."""
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.array(self.requested, np.int32))
    return bool(np.max(flags))

  def close(self) -> None:
    """Restores the previous handler and stands the watchdog down (the caller, which got the
    run's result, exits or goes on)."""
    signal.signal(signal.SIGTERM, self._previous)
    signal.set_wakeup_fd(self._previous_fd)
    self._closed.set()
    os.close(self._write_fd)  # ends the watchdog's read
