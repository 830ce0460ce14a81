"""The main job runs end to end on its embedded default."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs_and_round_trips(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  out = subprocess.run([sys.executable, "-m", "mimo_jax.demo", f"--workdir={tmp_path}",
                        "--mesh=fsdp:2,tensor:2", "--batch=4"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "re-imported logits differ by 0\n" in out.stdout
  assert sorted(os.listdir(tmp_path / "export")) == ["config.json", "model.safetensors"]
