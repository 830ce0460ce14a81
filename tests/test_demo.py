"""The main job runs end to end on its embedded default (with few steps: correctness of each stage
is tested in its own suite; this checks they connect)."""

import json
import os
import subprocess
import sys

import soundfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs_every_stage(tmp_path):
  out = subprocess.run([sys.executable, "-m", "mimo_jax.demo", f"--workdir={tmp_path}",
                        "--utterances=10", "--codec_steps=6", "--lm_steps=6", "--max_new=8"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  with open(tmp_path / "report.json") as f:
    report = json.load(f)
  assert set(report["seconds"]) == {"corpus", "tokenizer", "codec", "shards", "phase1", "phase2",
                                    "generate"}
  assert report["phase1"]["last"]["step"] == 6 and report["phase2"]["last"]["step"] == 6
  # Six steps on the espeak corpus already lower the phase-1 loss (a full demo run: 6.26 -> 1.98).
  assert report["phase1"]["last"]["loss"] < report["phase1"]["first"]["loss"]
  # Phase 2 trains the audio channels that phase 1 leaves alone.
  assert "audio_loss_c0" in report["phase2"]["last"]
  assert "audio_loss_c0" not in report["phase1"]["last"]
  for run in ("lm_phase1", "lm_phase2"):
    assert os.path.getsize(tmp_path / run / "loss_curve.png") > 0
    assert os.listdir(tmp_path / run / "checkpoints")
  assert sorted(os.listdir(tmp_path / "codec" / "export")) == ["config.json", "model.safetensors"]
  info = soundfile.info(str(tmp_path / "tts_sample.wav"))
  assert info.samplerate == 24000
  assert abs(info.duration - report["samples"]["tts_seconds"]) < 1e-3
  assert report["samples"]["asr_reference"] in out.stdout
