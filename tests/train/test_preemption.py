"""SIGTERM is honoured wherever a run waits: a Python wait is cut short, a wait inside XLA (a
compile, a step) ends the process after the grace period, a step in flight just sets the flag."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mimo_jax.train import preemption

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 60  # each case ends in a few seconds; without the handling they ran until killed

SCRIPT = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp
    from mimo_jax.train import preemption
    guard = preemption.Preemption(grace_s=2.0)
    spin = jax.jit(lambda x: jax.lax.fori_loop(0, 2**31 - 1, lambda i, v: jnp.sin(v) + 1.0, x))
    spin_small = jax.jit(lambda x: x + 1)
    spin_small(1.0).block_until_ready()  # compile the small one now
    print("READY", flush=True)
    if sys.argv[1] == "xla":  # the main thread never returns to Python: only the watchdog acts
      spin(jnp.float32(1.0)).block_until_ready()
    elif sys.argv[1] == "python":
      try:
        with guard.interruptible():
          while True:  # a data pipeline spinning on skip markers
            pass
      except preemption.Preempted:
        print("PREEMPTED", flush=True)
    guard.close()
""")


def _start(mode: str) -> subprocess.Popen:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "READY"
  return proc


@pytest.mark.parametrize("mode, status, says", [
    ("python", 0, "PREEMPTED"),
    ("xla", preemption.EXIT_STUCK, "has not exited (stuck in a compile, read or save)"),
])
def test_sigterm_ends_a_wait_in_python_at_once_and_one_inside_xla_after_the_grace(mode, status,
                                                                                   says):
  proc = _start(mode)
  try:
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=TIMEOUT_S)
  finally:
    proc.kill()
  assert proc.returncode == status, err[-2000:]
  assert says in out + err
  elapsed = time.monotonic() - sent
  assert elapsed < (1.5 if mode == "python" else 10), elapsed


def test_outside_a_wait_sigterm_only_sets_the_flag():
  previous = signal.getsignal(signal.SIGTERM)
  guard = preemption.Preemption(grace_s=60.0)
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)  # the handler runs at the next bytecode
    assert guard.requested and guard.agreed()
    with pytest.raises(preemption.Preempted):
      with guard.interruptible():  # a wait that starts after the signal is not entered
        pytest.fail("entered")
  finally:
    guard.close()
  assert signal.getsignal(signal.SIGTERM) == previous
