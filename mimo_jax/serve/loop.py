"""The serving loop: a request queue in front of a fixed number of generation slots, stepped by
one thread. It knows no model: a `SlotModel` inserts a request into a row, releases a row and
advances every live row by one chunk, saying what each row made.

Each admitted request (`Job`) receives what its model makes through `on_event` as it comes
("piece"), then one final event: "done" with the last piece, "cancelled" (its client went away),
"timeout" (its deadline passed) or "error" with the exception its insertion raised. A full queue refuses new requests
(`QueueFull`), which the server answers with 429.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class SlotModel(Protocol):
  slots: int

  def insert(self, row: int, request: Any) -> None: ...

  def release(self, row: int) -> None: ...

  def advance(self) -> list[tuple[int, Any, bool]]:
    """One chunk for every live row: (row, what it made, whether it is finished)."""


class QueueFull(Exception):
  pass


@dataclasses.dataclass(eq=False)
class Job:
  request: Any
  deadline: float  # time.monotonic() after which the job is ended as "timeout"
  on_event: Callable[[str, Any], None]  # (kind, payload), called from the loop's thread
  cancelled: bool = False


@dataclasses.dataclass
class LoopStats:
  """What the loop has done so far (read by the metrics)."""

  queued: int = 0
  busy: int = 0
  chunks: int = 0
  ended: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class ServingLoop:
  def __init__(self, model: SlotModel, *, max_queue: int):
    self.model, self.max_queue = model, max_queue
    self.stats = LoopStats()
    self._queue: collections.deque[Job] = collections.deque()
    self._rows: dict[int, Job] = {}
    self._admitting = 0  # jobs taken from the queue for free rows, not yet in `_rows`
    self._wake = threading.Condition()
    self._stopping = False
    self._thread = threading.Thread(target=self._run, name="serving-loop", daemon=True)

  def start(self) -> ServingLoop:
    self._thread.start()
    return self

  def stop(self) -> None:
    with self._wake:
      self._stopping = True
      self._wake.notify()
    self._thread.join()

  def submit(self, request: Any, timeout_s: float, on_event: Callable[[str, Any], None]) -> Job:
    job = Job(request, time.monotonic() + timeout_s, on_event)
    with self._wake:
      # Jobs the free rows will take do not wait: a burst that arrives before the loop thread
      # admits anything must not be refused while rows are free.
      free_rows = self.model.slots - len(self._rows) - self._admitting
      if len(self._queue) - max(free_rows, 0) >= self.max_queue:
        raise QueueFull(f"the queue holds {len(self._queue)} requests (--max_queue)")
      self._queue.append(job)
      self.stats.queued = len(self._queue)
      self._wake.notify()
    return job

  def cancel(self, job: Job) -> None:
    """The client went away: the job's slot (or queue place) is freed at the next chunk."""
    with self._wake:
      job.cancelled = True
      self._wake.notify()

  def _end(self, job: Job, kind: str, payload: Any = None) -> None:
    self.stats.ended[kind] += 1
    job.on_event(kind, payload)

  def _run(self) -> None:
    while True:
      with self._wake:
        while not self._stopping and not self._queue and not self._rows:
          self._wake.wait()
        if self._stopping:
          return
        now = time.monotonic()
        for job in [j for j in self._queue if j.cancelled or now > j.deadline]:
          self._queue.remove(job)
          self._end(job, "cancelled" if job.cancelled else "timeout")
        admitted = []
        free = [r for r in range(self.model.slots) if r not in self._rows]
        while free and self._queue:
          admitted.append((free.pop(0), self._queue.popleft()))
        self._admitting = len(admitted)
        self.stats.queued = len(self._queue)
      for row, job in list(self._rows.items()):
        if job.cancelled or now > job.deadline:
          self.model.release(row)
          del self._rows[row]
          self._end(job, "cancelled" if job.cancelled else "timeout")
      for row, job in admitted:
        try:
          self.model.insert(row, job.request)
        except Exception as e:  # noqa: BLE001 - the request's own fault: answered, loop goes on
          self._end(job, "error", e)
          continue
        self._rows[row] = job
      with self._wake:
        self._admitting = 0
      self.stats.busy = len(self._rows)
      if not self._rows:
        continue
      for row, made, finished in self.model.advance():
        if finished:
          self._end(self._rows.pop(row), "done", made)
        else:
          self._rows[row].on_event("piece", made)
      self.stats.chunks += 1
      self.stats.busy = len(self._rows)
