"""The trainer on data it cannot use, as a user meets it: skips are counted in the metrics and on
the console, a stream with nothing to train on is an error naming the reason (it used to spin
silently for ever), and SIGTERM during such a wait saves and exits 0 (it used to be ignored).

Runs `python -m mimo_jax.train` on the tiny config over pre-tokenised shards whose examples are
about 16 or 60 LLM positions long."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mimo_jax.data import pretokenize
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.train import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "tiny.py")
TIMEOUT = 600  # a compile on the shared 2-core machine; the cases themselves take seconds
WORDS = "the quick brown fox jumps over a lazy dog".split()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """16 records of 8 frames (fit 48 positions) and 16 of 200 (about 60 positions: too long)."""
  out = tmp_path_factory.mktemp("stall_shards")
  tokenizer = TextTokenizer.train([" ".join(WORDS)] * 4, vocab_size=320)
  tokenizer.save(str(out / "tokenizer"))
  rng = np.random.default_rng(0)
  records = []
  for i in range(32):
    frames = 8 if i % 2 else 200
    codes = np.stack([rng.integers(0, 1024 if c < 2 else 128, frames) for c in range(8)], 1)
    text = " ".join(rng.choice(WORDS, 3))
    records.append(pretokenize.serialize({
        "key": str(i), "audio": f"{i}.wav", "text": text, "speaker": "s", "language": "en",
        "task": "", "seconds": frames / 25, "codes": codes.astype(np.uint16),
        "text_ids": tokenizer.encode(text, special=False)}))
  (out / "data").mkdir()
  pretokenize.write_shard(out / "data" / pretokenize.shard_name(0, 1), records)
  return out


def _command(shards, workdir, *flags):
  return [sys.executable, "-m", "mimo_jax.train", f"--config={CONFIG}", f"--workdir={workdir}",
          "--mesh=data:1,fsdp:8,tensor:1", "--config.data.source=shards",
          f"--config.data.path={shards / 'data'}",
          f"--config.data.tokenizer={shards / 'tokenizer'}",
          "--config.train.phase=understanding", "--config.log.every_steps=1",
          "--config.log.tensorboard=False", "--config.checkpoint.async_save=False", *flags]


def _env():
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
          "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def test_skips_are_counted_in_the_metrics_and_on_the_console(shards, tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(_command(shards, workdir, "--config.train.steps=2",
                                   "--config.train.positions=48",
                                   "--config.data.max_skip_fraction=0.9"),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = metrics.read_jsonl(str(workdir / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert all(r["skipped/example_too_long"] > 0 for r in rows), rows
  assert "| skipped " in result.stderr and "(example_too_long " in result.stderr
  assert "examples skipped so far: {'example_too_long':" in result.stderr


def test_nothing_to_train_on_is_an_error_naming_the_reason(shards, tmp_path):
  """The issue's reproduction: every example longer than --config.train.positions=4."""
  result = subprocess.run(_command(shards, tmp_path / "run", "--config.train.positions=4"),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 2, result.stderr[-3000:]
  assert re.search(r"error: packing: nothing to pack in the last 32 windows: \d+ of \d+ examples "
                   r"skipped so far; top reasons: example_too_long \d+ \(longer than the 4 "
                   r"positions of a sequence\)", result.stderr), result.stderr[-3000:]


def test_sigterm_during_a_data_stall_saves_and_exits(shards, tmp_path):
  workdir = tmp_path / "run"
  log = tmp_path / "run.log"
  with open(log, "w") as out:  # limits off: the pipeline spins as it did before them
    # 2 positions: shorter than any example (the shortest, a 3-word text, takes 4), so the read
    # never ends; with 4, a rare batch could arrive and the signal would wait on a step's compile
    proc = subprocess.Popen(_command(shards, workdir, "--config.train.positions=2",
                                     "--config.data.max_skip_fraction=1.0",
                                     "--config.data.max_empty_windows=1000000000"),
                            cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + TIMEOUT
    while "training understanding from step 0" not in log.read_text():
      assert proc.poll() is None, log.read_text()[-3000:]
      assert time.monotonic() < deadline
      time.sleep(0.1)
    time.sleep(2)  # well inside the endless read
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    assert time.monotonic() - sent < 30
  finally:
    proc.kill()
  text = log.read_text()
  assert re.search(r"preempted at step 0; latest checkpoint: 0", text), text[-3000:]
  assert os.path.isdir(workdir / "checkpoints" / "0" / "data")
  assert json.loads((workdir / "run.json").read_text())["config"]["train"]["positions"] == 2
