"""Codec training runs end to end on espeak-ng speech, through the loop the LM trainer uses
(`mimo_jax.train.loop`): the LM trainer's reliability checks (kill -9 in a save, a stop and
SIGTERM, each resumed bit for bit; restore onto another mesh), export, frozen stage 2.

One stage-1 configuration (one compilation) serves the resume and export checks; the stage-2 run
starts from the stage-1 run's export. The runs use one device (two for the restore onto another
mesh): compiling the training step for the 8 fake devices takes minutes on a shared 2-core
machine, and the sharded statistics are tested in test_rvq_train. That a few hundred steps
lower the mel loss and use most codewords is shown by experiments/bench/codec_train.py (results
in experiments/results/codec_train.md).
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from mimo_jax.codec import checkpoint as codec_checkpoint
from mimo_jax.data import audio as data_audio
from mimo_jax.data import corpus
from mimo_jax.train import codec as codec_train
from mimo_jax.train import codec_data, metrics

STEPS = 12
EVERY = 5
KILL_AT = 7
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(manifest: str, **changes):
  config = ml_collections.ConfigDict(_base().to_dict())
  config.data.manifest = manifest
  config.steps = STEPS
  config.checkpoint_every = EVERY
  config.log_every = 20
  config.tensorboard = False
  config.data.crop_seconds = 0.48
  config.data.batch_size = 4
  config.mesh = "data:1,fsdp:1,tensor:1"
  config.optimizer.warmup_steps = 5
  config.rvq.kmeans_iters = 10
  config.codec.overrides.num_quantizers = 2
  config.codec.overrides.codebook_size = (16,)
  config.disc.model.periods = (2,)
  config.disc.model.mpd_channels = (4, 8)
  config.disc.model.stft_ffts = (128,)
  config.disc.model.stft_filters = 4
  config.disc.model.stft_dilations = (1,)
  config.update(changes)
  return config


def _base():
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs",
                      "codec_tiny.py")
  spec = importlib.util.spec_from_file_location("codec_tiny", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  return corpus.build_corpus(str(tmp_path_factory.mktemp("corpus")), 8, seed=1, languages=("en",))


@pytest.fixture(scope="module")
def full_run(manifest, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  return workdir, _train(_config(manifest), workdir)


def _train(config, workdir, devices=1, **kwargs):
  return codec_train.train(config, workdir, devices=jax.devices()[:devices], **kwargs)


def _rows(workdir) -> list[dict]:
  """The run's metrics.jsonl: one row per step, the steps a resume redid logged once."""
  return metrics.read_jsonl(os.path.join(workdir, metrics.METRICS_FILE))


def test_stage1_run_logs_and_exports(full_run):
  workdir, result = full_run
  rows = _rows(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  # k-means on the first batch spreads its frames over most codewords; the randomly initialised
  # encoder then moves, codes fall below the EMA threshold and are replaced.
  assert rows[0]["usage/q0"] > 0.5 and rows[0]["usage/q1"] > 0.5
  assert sum(r["replaced/q0"] + r["replaced/q1"] for r in rows) > 0
  assert all(np.isfinite(r["loss"]) for r in rows)
  # The export is an official tokenizer folder holding the final weights (trained codebooks).
  params, cfg = codec_checkpoint.import_codec(os.path.join(workdir, "export"))
  assert cfg == codec_train.codec_from(_config(""))
  np.testing.assert_array_equal(params["quantizer"]["embed"],
                                np.asarray(result.state["codec"]["quantizer"]["embed"]))
  assert np.all(params["quantizer"]["inited"] == 1)


def test_killed_run_resumes_with_identical_losses(full_run, manifest, tmp_path):
  reference = _rows(full_run[0])
  workdir = str(tmp_path / "killed")
  killed = _train(_config(manifest), workdir, max_steps=KILL_AT)
  assert killed.step == KILL_AT
  # The kill came after step 7; the last checkpoint is step 5, so steps 6 and 7 are redone.
  assert killed.checkpoint_step == EVERY
  resumed = _train(_config(manifest), workdir, max_steps=KILL_AT + 5)
  assert resumed.step == KILL_AT + 5
  rows = _rows(workdir)
  assert [r["step"] for r in rows] == list(range(1, KILL_AT + 6))
  for row in rows[EVERY:]:
    expected = reference[row["step"] - 1]
    for key in ("loss", "mel", "commit", "grad_norm", "perplexity/q0", "replaced/q1"):
      assert row[key] == expected[key], (row["step"], key)


def test_stage2_keeps_encoder_and_rvq_bit_identical(full_run, manifest, tmp_path):
  stage1_dir, _ = full_run
  start, _ = codec_checkpoint.import_codec(os.path.join(stage1_dir, "export"))
  config = _config(manifest, stage=2, init_from=stage1_dir, steps=3, export=False)
  result = _train(config, str(tmp_path / "stage2"))
  codec = jax.device_get(result.state["codec"])
  for part in ("encoder", "quantizer"):
    jax.tree.map(np.testing.assert_array_equal, codec[part], start[part])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), codec["decoder"],
                                         start["decoder"]))
  assert all(changed)
  rows = _rows(str(tmp_path / "stage2"))
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert all(np.isfinite([r["loss"], r["disc_loss"], r["adv"], r["fm"]]).all() for r in rows)
  assert all(r["replaced/q0"] == 0 for r in rows)


def test_data_skips_unusable_clips_and_pads_short_ones(manifest, tmp_path):
  """Manifest durations outside the limits and conversation lines are dropped up front, counted;
  unreadable files are counted at load time; a clip shorter than the crop is zero-padded with its
  valid length."""
  folder = os.path.dirname(manifest)
  with open(manifest) as f:
    good = [json.loads(line) for line in f][:2]
  (tmp_path / "broken.wav").write_text("not audio")
  lines = good + [{"audio": str(tmp_path / "broken.wav"), "text": "x"},
                  {"audio": os.path.join(folder, good[0]["audio"]), "duration": 0.1},
                  {"messages": [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello"}]}]
  for line in good:
    line["audio"] = os.path.join(folder, line["audio"])
  path = tmp_path / "manifest.jsonl"
  path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{not json\n")
  config = _config(str(path))
  limits = data_audio.AudioLimits(min_seconds=0.3, max_seconds=60.0)
  records, skips = codec_data.usable_records(str(path), limits)
  assert len(records) == 3 and skips.counts == {"too_short": 1, "malformed_manifest_line": 1,
                                                "conversation_not_utterance": 1}
  cfg = codec_train.codec_from(config)
  crop = 5 * cfg.samples_per_frame * 24  # longer than every clip (~3 s): all get padded
  loader = codec_data.LoadCrop(cfg, crop, limits, len(records))
  rng = np.random.default_rng(0)
  assert loader.random_map(records[2], rng) is None
  assert dict(loader.skips.counts) == {"unreadable": 1}
  item = loader.random_map(records[0], rng)
  n = int(good[0]["duration"] * cfg.sampling_rate)
  assert item["wav"].shape == (crop,) and abs(int(item["lengths"]) - n) <= 1
  assert not np.any(item["wav"][item["lengths"]:]) and np.any(item["wav"][:item["lengths"]])


def test_sigterm_saves_after_the_step_and_the_resumed_run_continues_exactly(full_run, manifest,
                                                                            tmp_path,
                                                                            monkeypatch):
  """SIGTERM during step 3 (as a preemption notice): the run saves checkpoint 3 (not on the
  interval of 5) and returns "preempted"; the rerun continues from it with the losses of the
  uninterrupted run."""
  reference = _rows(full_run[0])
  workdir = str(tmp_path / "preempted")
  flatten, calls = metrics.flatten, []

  def flatten_and_signal(step_metrics):
    calls.append(1)
    if len(calls) == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return flatten(step_metrics)

  monkeypatch.setattr(metrics, "flatten", flatten_and_signal)
  preempted = _train(_config(manifest), workdir, max_steps=KILL_AT)
  monkeypatch.undo()
  assert (preempted.reason, preempted.step, preempted.checkpoint_step) == ("preempted", 3, 3)
  assert [r["step"] for r in _rows(workdir)] == [1, 2, 3]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handler is gone
  resumed = _train(_config(manifest), workdir, max_steps=5)
  assert resumed.step == 5
  rows = _rows(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  for row in rows[3:]:
    assert row["loss"] == reference[row["step"] - 1]["loss"], row["step"]


def test_restore_onto_another_mesh(full_run, manifest, tmp_path):
  """A checkpoint written on one device resumes on two (the batch split over fsdp): the state
  is read straight into the new shardings and the losses go on as the one-device run's."""
  reference = _rows(full_run[0])
  workdir = str(tmp_path / "remesh")
  assert _train(_config(manifest), workdir, max_steps=EVERY).checkpoint_step == EVERY
  two = _config(manifest, mesh="data:1,fsdp:2,tensor:1")
  resumed = _train(two, workdir, devices=2, max_steps=EVERY + 2)
  assert resumed.state["codec"]["quantizer"]["embed"].sharding.mesh.size == 2
  rows = _rows(workdir)
  assert [r["step"] for r in rows] == list(range(1, EVERY + 3))
  np.testing.assert_allclose([r["loss"] for r in rows[EVERY:]],
                             [reference[s - 1]["loss"] for s in (EVERY + 1, EVERY + 2)],
                             atol=1e-5, rtol=0)


def test_kill_9_during_a_save_then_resume_exactly(manifest, tmp_path):
  """`python -m mimo_jax.train_codec` killed with SIGKILL while checkpoint 10 is half written:
  checkpoint 5 stays the latest, the half-written one is never used, and the command run again
  redoes steps 6-10 bit for bit as the killed process did them (both processes alike: one CPU
  device; an in-process run on one of 8 fake devices differs in the last bits)."""
  workdir = str(tmp_path / "kill9")
  config_py = tmp_path / "codec_config.py"  # this test's config as an experiment file
  fields = json.dumps(_config(manifest).to_dict())
  config_py.write_text("import json\nimport ml_collections\n\n\ndef get_config():\n"
                       f"  return ml_collections.ConfigDict(json.loads({fields!r}))\n")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  command = ["mimo_jax.train_codec", f"--config={config_py}", f"--workdir={workdir}"]
  log = tmp_path / "kill9.log"
  with open(log, "w") as out:
    proc = subprocess.Popen([sys.executable, "-m", "tests.train.hang_in_save", command[0],
                             str(2 * EVERY), *command[1:]], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 900
    while "HANGING_IN_SAVE" not in log.read_text():
      assert proc.poll() is None, log.read_text()[-3000:]
      assert time.time() < deadline, "no HANGING_IN_SAVE within 900 s"
      time.sleep(0.1)
  finally:
    proc.kill()
  proc.wait()
  assert glob.glob(os.path.join(workdir, "checkpoints", f"{2 * EVERY}.orbax-checkpoint-tmp*"))
  killed = _rows(workdir)
  assert [r["step"] for r in killed] == list(range(1, 2 * EVERY + 1))
  done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert f"finished at step {STEPS}" in done.stdout
  rows = _rows(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  for row in rows[EVERY:2 * EVERY]:
    for key in ("loss", "mel", "commit", "grad_norm", "perplexity/q0", "replaced/q1"):
      assert row[key] == killed[row["step"] - 1][key], (row["step"], key)
