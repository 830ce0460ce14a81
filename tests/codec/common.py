"""Paths and loaders shared by the codec tests."""

import functools
import os

import jax
import numpy as np

from mimo_jax.codec import checkpoint
from mimo_jax.nn.params import is_spec

TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "official_tiny_a",
                             "tokenizer")
CLIP = os.path.join(TOKENIZER_DIR, "clip.wav")


@functools.lru_cache(maxsize=None)
def official_io() -> dict:
  with np.load(os.path.join(TOKENIZER_DIR, "io.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def official_codec():
  """(params, cfg) of the official tiny tokenizer."""
  return checkpoint.import_codec(TOKENIZER_DIR)


def random_codec_params(specs, seed: int = 0) -> dict:
  """Numpy draws for every leaf (fast: no per-shape compilation), scaled 1/sqrt(fan-in)."""
  rng = np.random.default_rng(seed)
  draw = lambda s: (rng.standard_normal(s.shape) / np.sqrt(max(s.shape[-2:-1] or [1])) + (
      1.0 if s.init == "ones" else 0.0)).astype(np.float32)
  return jax.tree.map(draw, specs, is_leaf=is_spec)
