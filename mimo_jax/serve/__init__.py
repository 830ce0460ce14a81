"""Serving MiMo-Audio over HTTP with continuous batching (`python -m mimo_jax.serve`).

`slots` holds a fixed batch of generation rows in `lm.generate`'s jitted loop and inserts new
requests into free rows; `loop` (model-agnostic) owns the queue, the slots, cancellation and
timeouts; `api` is the thin OpenAI-shaped HTTP layer; `metrics` the Prometheus text.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import fastapi
import jax
import numpy as np
import uvicorn

from mimo_jax import inference
from mimo_jax.serve import api, slots
from mimo_jax.serve.loop import ServingLoop


def build(mimo: inference.MimoAudio, *, shape: slots.Shape, chunk_steps: int, max_queue: int,
          mesh: jax.sharding.Mesh | None = None,
          voices: dict[str, np.ndarray | None] | None = None,
          limits: api.Limits = api.Limits()) -> tuple[fastapi.FastAPI, api.Server]:
  """The app and its server; the loop's thread runs from the app's startup to its shutdown.
  voices: name -> codes [t, c] of a voice prompt ("default": none)."""
  decoder = slots.SlotDecoder(mimo.params, mimo.cfg, shape, empty_id=mimo.tokens.empty,
                              chunk_steps=chunk_steps, mesh=mesh)
  loop = ServingLoop(decoder, max_queue=max_queue)
  server = api.Server(mimo, loop, max_new=shape.max_new, max_prompt=shape.max_prompt,
                      voices={"default": None, **(voices or {})}, limits=limits)
  return api.app(server), server





@contextlib.contextmanager
def running(application: fastapi.FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
  """Serves `application` from a thread on a free port of `host` (tests, benchmarks); yields
  its base URL and stops it on exit."""
  with socket.socket() as s:
    s.bind((host, 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(application, host=host, port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
  thread.start()
  while not server.started:
    if not thread.is_alive():
      raise RuntimeError(f"the server did not start on {host}:{port}")
    time.sleep(0.05)
  try:
    yield f"http://{host}:{port}"
  finally:
    server.should_exit = True
    thread.join()
