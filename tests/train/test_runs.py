"""Training runs through the launcher, as a user runs them: resume after kill -9, a kill during an
async save, SIGTERM, another mesh, two processes, phase 1 then phase 2.

Every run is the tiny config for 8 steps (checkpoints every 2) on 8 fake CPU devices unless said
otherwise. The runs share a persistent compilation cache, so the phase-2 step on fsdp:8 is
compiled once for all of them.
"""

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mimo_jax import sharding
from mimo_jax.train import checkpoint, metrics
from mimo_jax.train import config as train_config
from mimo_jax.train.state import TrainSetup, abstract_params_of
from mimo_jax.nn.params import init_params
from mimo_jax.train.loop import METRICS_FILE
from mimo_jax.train.run_dir import CHECKPOINT_DIR, PARAMS
from mimo_jax.train.optimizer import group_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "tiny.py")
STEPS = 8
RUN_FLAGS = (f"--config={CONFIG}", f"--config.train.steps={STEPS}",
             "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=5",
             "--config.log.every_steps=1", "--config.log.tensorboard=False")
MESH = "--mesh=data:1,fsdp:8,tensor:1"
TIMEOUT = 1200  # generous: on a shared 2-core machine a compile can take minutes


class Runner:
  """Starts launcher processes with a shared compilation cache; logs go beside each workdir."""

  def __init__(self, tmp: str):
    self.tmp = tmp
    self.cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(tmp, "jax_cache")

  def env(self, devices: int) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=ROOT,
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=self.cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env

  def workdir(self, name: str) -> str:
    return os.path.join(self.tmp, name)

  def start(self, name: str, *flags: str, module: str = "mimo_jax.train", args=(),
            devices: int = 8, log: str | None = None) -> tuple[subprocess.Popen, str]:
    log = log or f"{self.workdir(name)}.log"
    with open(log, "a") as out:
      proc = subprocess.Popen(
          [sys.executable, "-m", module, *args, f"--workdir={self.workdir(name)}", *flags],
          cwd=ROOT, env=self.env(devices), stdout=out, stderr=subprocess.STDOUT)
    return proc, log

  def run(self, name: str, *flags: str, **kwargs) -> str:
    proc, log = self.start(name, *flags, **kwargs)
    try:
      rc = proc.wait(TIMEOUT)
    finally:
      proc.kill()  # no stray writer into a workdir another run may reuse
    text = read(log)
    assert rc == 0, f"{name} failed ({rc}):\n{text[-3000:]}"
    return text


def read(path: str) -> str:
  with open(path) as f:
    return f.read()


def wait_for(proc: subprocess.Popen, log: str, text: str) -> None:
  deadline = time.time() + TIMEOUT
  while text not in read(log):
    assert proc.poll() is None, f"exited ({proc.returncode}) before {text!r}:\n{read(log)[-3000:]}"
    assert time.time() < deadline, f"no {text!r} within {TIMEOUT}s"
    time.sleep(0.05)


def losses(workdir: str) -> dict[int, float]:
  rows = metrics.read_jsonl(os.path.join(workdir, METRICS_FILE))
  steps = [r["step"] for r in rows]
  assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
  return {r["step"]: r["loss"] for r in rows}


def latest_step(workdir: str) -> int | None:
  with checkpoint.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), read_only=True) as ckpt:
    return ckpt.latest_step()


def tiny_setup(phase: str) -> TrainSetup:
  cfg = train_config.load_file(CONFIG)
  cfg.train.phase = phase
  return TrainSetup.from_config(cfg)


def final_params(workdir: str, mesh) -> dict:
  abstract = abstract_params_of(tiny_setup("generation").model, mesh)
  params = checkpoint.restore_params(os.path.join(workdir, CHECKPOINT_DIR), abstract,
                                     item=PARAMS)
  return jax.tree.map(np.asarray, params)


def by_group(params: dict) -> dict[str, list[np.ndarray]]:
  groups: dict[str, list[np.ndarray]] = {}
  for key, subtree in params.items():
    groups.setdefault(group_of(key), []).extend(jax.tree.leaves(subtree))
  return groups


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
  return Runner(str(tmp_path_factory.mktemp("train_runs")))


@pytest.fixture(scope="module")
def baseline(runner) -> dict[int, float]:
  """An uninterrupted phase-2 run (checkpoints 2, 4, 6, 8 kept)."""
  runner.run("baseline", *RUN_FLAGS, MESH)
  return losses(runner.workdir("baseline"))


@pytest.fixture(scope="module")
def mesh8():
  return sharding.make_mesh("data:1,fsdp:-1,tensor:1")


def test_loss_falls_in_phase_2(baseline):
  assert sorted(baseline) == list(range(1, STEPS + 1))
  assert baseline[STEPS] < baseline[1] - 0.2, baseline


def test_kill_during_save_sigterm_and_kill9_resume_exactly(runner, baseline):
  name = "resume"
  workdir = runner.workdir(name)
  # kill -9 while checkpoint 4 is half written: checkpoint 2 stays the latest, 4 is never used.
  proc, log = runner.start(name, *RUN_FLAGS, MESH, module="tests.train.hang_in_save",
                           args=["mimo_jax.train.__main__", "4"])
  try:
    wait_for(proc, log, "HANGING_IN_SAVE")
  finally:
    proc.kill()
  proc.wait(TIMEOUT)
  assert glob.glob(os.path.join(workdir, CHECKPOINT_DIR, "4.orbax-checkpoint-tmp*"))
  assert latest_step(workdir) == 2

  # SIGTERM as soon as the restarted run is training: it saves at the step it reached and exits
  # 0. The signal may land while the first batch is awaited (no step: step 2) or after a step.
  proc, log = runner.start(name, *RUN_FLAGS, MESH)
  try:
    wait_for(proc, log, "from step 2 to 8")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0, read(log)[-3000:]
  finally:
    proc.kill()
  preempted = re.search(r"preempted at step (\d+); latest checkpoint: (\d+)", read(log))
  assert preempted and preempted[1] == preempted[2], read(log)[-3000:]
  assert 2 <= int(preempted[1]) < STEPS and latest_step(workdir) == int(preempted[1])
  assert not glob.glob(os.path.join(workdir, CHECKPOINT_DIR, "*tmp*"))  # cleaned on restart

  runner.run(name, *RUN_FLAGS, MESH)
  # Steps 1-2 from the first process, then the second's, then the third's to 8: bit for bit the
  # uninterrupted run (the killed process's steps 3-4 were dropped from the log on resume).
  assert losses(workdir) == baseline


def test_restore_onto_another_mesh(runner, baseline):
  workdir = runner.workdir("remesh")
  shutil.copytree(runner.workdir("baseline"), workdir)
  for step in (4, 6, 8):
    shutil.rmtree(os.path.join(workdir, CHECKPOINT_DIR, str(step)))
  text = runner.run("remesh", *RUN_FLAGS, "--mesh=data:1,fsdp:4,tensor:2")
  assert "resuming from" in text and "from step 2 to 8" in text
  got = losses(workdir)
  assert sorted(got) == sorted(baseline)
  np.testing.assert_allclose([got[s] for s in range(3, STEPS + 1)],
                             [baseline[s] for s in range(3, STEPS + 1)], atol=1e-5, rtol=0)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_one_process_restores(runner, baseline, mesh8):
  name = "two_processes"
  address = f"127.0.0.1:{_free_port()}"
  procs = [runner.start(name, *RUN_FLAGS, "--mesh=data:1,fsdp:2,tensor:2",
                        f"--coordinator_address={address}", "--num_processes=2",
                        f"--process_id={i}", devices=2, log=f"{runner.workdir(name)}.{i}.log")
           for i in range(2)]
  try:
    for i, (proc, log) in enumerate(procs):
      assert proc.wait(TIMEOUT) == 0, f"process {i}:\n{read(log)[-3000:]}"
  finally:
    for proc, _ in procs:
      proc.kill()
  workdir = runner.workdir(name)
  got = losses(workdir)
  assert sorted(got) == sorted(baseline)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [baseline[s] for s in sorted(got)],
                             atol=1e-5, rtol=0)
  # Each process saved its own data-iterator position.
  data_files = sorted(f for f in os.listdir(os.path.join(workdir, CHECKPOINT_DIR, str(STEPS),
                                                        "data")) if f.startswith("process_"))
  assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]
  # One process with 8 devices reads the checkpoint the two wrote: the values trained there.
  params = final_params(workdir, mesh8)
  norm = np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in jax.tree.leaves(params)))
  logged = metrics.read_jsonl(os.path.join(workdir, METRICS_FILE))[-1]["param_norm"]
  np.testing.assert_allclose(norm, logged, rtol=1e-6)


def test_phase_1_then_phase_2(runner, baseline, mesh8):
  runner.run("phase1", *RUN_FLAGS, MESH, "--config.train.phase=understanding")
  phase1 = losses(runner.workdir("phase1"))
  assert phase1[STEPS] < phase1[1] - 0.2, phase1
  setup = tiny_setup("understanding")
  # The run's initial params (state.init_state draws them from the first half of key(seed)).
  initial = jax.jit(lambda k: init_params(setup.model_specs, jax.random.split(k)[0]))(
      jax.random.key(0))
  after1 = final_params(runner.workdir("phase1"), mesh8)
  before, trained = by_group(jax.tree.map(np.asarray, initial)), by_group(after1)
  for a, b in zip(before["patch_decoder"], trained["patch_decoder"]):
    np.testing.assert_array_equal(a, b)  # bit-identical: frozen, no weight decay either
  for group in ("patch_encoder", "llm"):
    unchanged = sum(np.array_equal(a, b) for a, b in zip(before[group], trained[group]))
    assert unchanged == 0, f"phase 1 left {unchanged} {group} params unchanged"

  text = runner.run("phase2", *RUN_FLAGS, MESH, f"--init_from={runner.workdir('phase1')}")
  assert "init_from: params of the latest checkpoint" in text
  phase2 = losses(runner.workdir("phase2"))
  # It starts from phase 1's params (its text loss already learnt), not from random weights.
  assert phase2[1] < baseline[1] - 0.2, (phase2, baseline)
  after2 = by_group(final_params(runner.workdir("phase2"), mesh8))
  for group in ("patch_encoder", "llm", "patch_decoder"):
    unchanged = sum(np.array_equal(a, b) for a, b in zip(by_group(after1)[group], after2[group]))
    assert unchanged == 0, f"phase 2 left {unchanged} {group} params unchanged"


def test_unknown_config_file_fails_at_start(runner):
  proc, log = runner.start("bad_config", "--config=experiments/configs/no_such_config.py")
  try:
    assert proc.wait(TIMEOUT) == 2
  finally:
    proc.kill()
  assert "error: --config=experiments/configs/no_such_config.py: no such file" in read(log)
