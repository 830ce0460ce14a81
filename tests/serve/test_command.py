"""`python -m mimo_jax.serve`: its flags, and a missing checkpoint named before anything loads."""

import subprocess
import sys


def _run(*args):
  return subprocess.run([sys.executable, "-m", "mimo_jax.serve", *args], capture_output=True,
                        text=True, timeout=300)


def test_command_lists_its_flags_and_names_a_missing_checkpoint():
  shown = _run("--helpshort")
  for flag in ("--ckpt", "--codec_ckpt", "--slots", "--port", "--mesh", "--max_queue",
               "--timeout_s", "--max_audio_s", "--max_body_mb", "--voices"):
    assert flag in shown.stdout, flag
  missing = _run("--codec_ckpt=/nonexistent")
  assert missing.returncode != 0 and "--ckpt is required" in missing.stderr, missing.stderr
