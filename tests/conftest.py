"""Test set-up: 8 fake CPU devices for the sharding tests; paths of the shipped fixtures."""

import os
import tempfile

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

# The planner tests compile for abstract TPUs: libtpu's host-wide lock must not block them when
# another JAX process (a test's subprocess) holds it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# One persistent compilation cache per pytest session, inherited by the subprocesses the tests
# start (launcher restarts, multi-process runs): the same step is compiled once, not per process.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"mimo_jax_tests_{os.getpid()}_jax_cache"))

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain's worker processes and our absl-flag entry points read FLAGS; pytest never parses them.
flags.FLAGS.mark_as_parsed()

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
OFFICIAL_TINY_LM = os.path.join(DATA_DIR, "official_tiny_a", "lm")
OFFICIAL_TINY_CODEC = os.path.join(DATA_DIR, "official_tiny_a", "tokenizer")


@pytest.fixture(scope="session")
def official_tiny_lm_dir() -> str:
  return OFFICIAL_TINY_LM


@pytest.fixture(scope="session")
def official_tiny_codec_dir() -> str:
  return OFFICIAL_TINY_CODEC
