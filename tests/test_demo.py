"""The main job runs end to end on its embedded default (with few steps: correctness of each stage
is tested in its own suite; this checks they connect and that the judges score the result)."""

import json
import os
import subprocess
import sys

import pytest
import soundfile
from absl import flags
from ml_collections import config_flags

from mimo_jax import demo
from mimo_jax.eval import store
from mimo_jax.train import config as train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs_every_stage_and_is_judged(tmp_path):
  out = subprocess.run([sys.executable, "-m", "mimo_jax.demo", f"--workdir={tmp_path}",
                        "--utterances=10", "--codec_steps=6", "--lm_steps=30",
                        "--eval_items=2", "--max_new=48"],
                       cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  with open(tmp_path / "report.json") as f:
    report = json.load(f)
  assert set(report["seconds"]) == {"corpus", "tokenizer", "codec", "shards", "phase1", "phase2",
                                    "evaluate"}
  assert report["phase1"]["last"]["step"] == 30 and report["phase2"]["last"]["step"] == 30
  assert report["phase1"]["last"]["loss"] < report["phase1"]["first"]["loss"]
  # Phase 2 trains the audio channels that phase 1 leaves alone.
  assert "audio_loss_c0" in report["phase2"]["last"]
  assert "audio_loss_c0" not in report["phase1"]["last"]
  for run in ("lm_phase1", "lm_phase2"):
    assert os.path.getsize(tmp_path / run / "loss_curve.png") > 0
  # Phase 2 and the TTS evaluation ran with the recipe's settings.
  with open(tmp_path / "lm_phase2" / "run.json") as f:
    assert json.load(f)["loss"]["input_code_noise"] == [0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5]
  with open(tmp_path / "eval" / "lm_phase2" / "summary.json") as f:
    assert json.load(f)["settings"]["tts_audio_temperature"] == 0.0
  # The judges' scores, each beside the same judge on the espeak-ng ground truth.
  scores = report["scores"]["trained"]
  tts = scores["tts"]
  measured = [scores["asr"]["wer"]["macro"], tts["closed_accuracy"], tts["ref_closed_accuracy"],
              tts["open_wer"]["macro"], tts["ref_open_wer"]["macro"],
              tts["duration_ratio"]["mean"], tts["dnsmos_ovrl"]["mean"],
              scores["codec"]["stoi"]["mean"]]
  assert None not in measured, measured
  # SIM is scored only where the voice encoder hears voiced speech (n counts those items).
  assert "mean" in tts["sim"] and 0 <= tts["sim"]["n"] <= 2
  assert tts["ref_closed_accuracy"] >= 0.5  # the closed-set judge knows espeak-ng
  assert [t["key"] for t in report["targets"]] == [
      "tts.duration_ratio.mean", "tts.closed_accuracy", "asr.wer.macro"]
  assert "target:" in out.stdout
  # Speech came out for every sentence, lasting what espeak-ng's reading does within a factor 3.
  rows = store.read_rows(next((tmp_path / "eval" / "lm_phase2" / "tts").glob("items.*.jsonl")))
  assert len(rows) == 2
  for row in rows:
    assert row["seconds"] > 0 and 1 / 3 < row["duration_ratio"] < 3, row
    assert soundfile.info(row["audio"]).samplerate == 24000


@pytest.mark.parametrize("name", sorted(demo.RECIPES))
def test_each_recipes_phase_changes_make_a_valid_lm_config(name):
  """A misspelt field, an unknown task or a bad value in a recipe's phase changes fails here,
  not after the recipe's earlier stages have run for an hour."""
  recipe = demo.RECIPES[name]
  for phase, changes in (("understanding", recipe.phase1_config),
                         ("generation", recipe.phase2_config)):
    argv = ["demo", f"--config={ROOT}/experiments/configs/demo.py",
            f"--config.train.phase={phase}", "--config.data.path=shards",
            *demo.config_overrides(changes)]
    values = flags.FlagValues()  # the overrides are parsed as `python -m mimo_jax.train` does
    config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
    values(argv)
    train_config.validate(values.config)
