"""Progress lines of the data commands (corpus, pretokenize): files/s, audio hours/s, ETA."""

from __future__ import annotations

import sys
import time


class Progress:
  """Prints files/s, audio hours/s and the ETA at most every `interval` seconds."""

  def __init__(self, total_files: int, interval: float = 10.0, out=sys.stdout):
    self.total, self.interval, self.out = total_files, interval, out
    self.files, self.seconds = 0, 0.0
    self.start = self.last = time.monotonic()

  def update(self, files: int, audio_seconds: float) -> None:
    self.files += files
    self.seconds += audio_seconds
    now = time.monotonic()
    if now - self.last >= self.interval or self.files == self.total:
      self.last = now
      print(self.line(now), file=self.out, flush=True)

  def line(self, now: float) -> str:
    elapsed = max(now - self.start, 1e-9)
    rate = self.files / elapsed
    eta = (self.total - self.files) / rate if rate > 0 else float("inf")
    return (f"files {self.files}/{self.total} ({rate:.2f}/s), audio {self.seconds / 3600:.3f} h "
            f"({self.seconds / 3600 / elapsed:.4f} h/s), ETA {_duration(eta)}")


def _duration(seconds: float) -> str:
  if seconds == float("inf"):
    return "unknown"
  minutes, s = divmod(int(round(seconds)), 60)
  hours, m = divmod(minutes, 60)
  return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"
