"""Prometheus metrics of one server: queue and slots (read from the loop when scraped), tokens
and audio seconds (totals and per second over the last `WINDOW_S`), time to first audio,
request durations, and errors by kind."""

from __future__ import annotations

import collections
import threading
import time

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mimo_jax.serve.loop import ServingLoop

WINDOW_S = 10.0


class _Rate:
  """A running total and its rate over the last WINDOW_S seconds (thread-safe)."""

  def __init__(self):
    self.total = 0.0
    self._events = collections.deque()
    self._lock = threading.Lock()

  def add(self, amount: float) -> None:
    with self._lock:
      self.total += amount
      self._events.append((time.monotonic(), amount))

  def per_second(self) -> float:
    with self._lock:
      start = time.monotonic() - WINDOW_S
      while self._events and self._events[0][0] < start:
        self._events.popleft()
      return sum(a for _, a in self._events) / WINDOW_S


class Metrics:
  def __init__(self, loop: ServingLoop):
    self.registry = prometheus_client.CollectorRegistry()
    self._loop, self.tokens, self.audio_seconds = loop, _Rate(), _Rate()
    self.registry.register(self)
    self.time_to_first_audio = prometheus_client.Histogram(
        "mimo_time_to_first_audio_seconds", "Request arrival to its first audio bytes",
        registry=self.registry, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
    self.duration = prometheus_client.Histogram(
        "mimo_request_duration_seconds", "Request arrival to its last byte", ["endpoint"],
        registry=self.registry, buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
    self.requests = prometheus_client.Counter(
        "mimo_requests", "Requests answered, by endpoint and status code", ["endpoint", "code"],
        registry=self.registry)
    self.errors = prometheus_client.Counter(
        "mimo_errors", "Requests that failed, by kind", ["kind"], registry=self.registry)

  def collect(self):
    stats = self._loop.stats
    yield GaugeMetricFamily("mimo_queue_depth", "Requests waiting for a slot", stats.queued)
    yield GaugeMetricFamily("mimo_slots_busy", "Slots generating", stats.busy)
    yield GaugeMetricFamily("mimo_slots", "Slots in the jitted loop", self._loop.model.slots)
    ended = CounterMetricFamily("mimo_requests_ended", "Generations ended, by how (done, "
                                "cancelled: the client went away, timeout, error)", labels=["how"])
    for how in ("done", "cancelled", "timeout", "error"):
      ended.add_metric([how], stats.ended[how])
    yield ended
    yield CounterMetricFamily("mimo_generated_tokens", "LLM steps made (a text token or a "
                              "patch of audio each)", self.tokens.total)
    yield GaugeMetricFamily("mimo_generated_tokens_per_second",
                            f"LLM steps per second over the last {WINDOW_S:g} s",
                            self.tokens.per_second())
    yield CounterMetricFamily("mimo_audio_seconds", "Seconds of audio sent",
                              self.audio_seconds.total)
    yield GaugeMetricFamily("mimo_audio_seconds_per_second",
                            f"Seconds of audio sent per second over the last {WINDOW_S:g} s",
                            self.audio_seconds.per_second())

  def text(self) -> bytes:
    return prometheus_client.generate_latest(self.registry)
