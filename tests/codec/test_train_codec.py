"""Codec training runs end to end on espeak-ng speech: kill + resume, export, frozen stage 2.

One stage-1 configuration (one compilation) serves the resume and export checks; the stage-2 run
starts from the stage-1 run's export. The runs use one device: compiling the training step for
the 8 fake devices takes minutes on a shared 2-core machine, and the sharded statistics are
tested in test_rvq_train. That a few hundred steps lower the mel loss and use most codewords is
shown by experiments/bench/codec_train.py (results in experiments/results/codec_train.md).
"""

import json
import os
import signal

import jax
import numpy as np
import pytest

from mimo_jax import train_codec
from mimo_jax.codec import checkpoint as codec_checkpoint
from mimo_jax.data import corpus

STEPS = 12
EVERY = 5
KILL_AT = 7


def _config(manifest: str, **changes):
  config = train_codec.ml_collections.ConfigDict(_base().to_dict())
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


def _train(config, workdir, **kwargs):
  return train_codec.train(config, workdir, devices=jax.devices()[:1], **kwargs)


def test_stage1_run_logs_and_exports(full_run):
  workdir, result = full_run
  rows = result.rows
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  # k-means on the first batch spreads its frames over most codewords; the randomly initialised
  # encoder then moves, codes fall below the EMA threshold and are replaced.
  assert rows[0]["usage/q0"] > 0.5 and rows[0]["usage/q1"] > 0.5
  assert sum(r["replaced/q0"] + r["replaced/q1"] for r in rows) > 0
  assert all(np.isfinite(r["loss"]) for r in rows)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == list(range(1, STEPS + 1))
  # The export is an official tokenizer folder holding the final weights (trained codebooks).
  params, cfg = codec_checkpoint.import_codec(os.path.join(workdir, "export"))
  assert cfg == train_codec.codec_from(_config(""))
  np.testing.assert_array_equal(params["quantizer"]["embed"],
                                np.asarray(result.state["codec"]["quantizer"]["embed"]))
  assert np.all(params["quantizer"]["inited"] == 1)


def test_killed_run_resumes_with_identical_losses(full_run, manifest, tmp_path):
  _, reference = full_run
  workdir = str(tmp_path / "killed")
  killed = _train(_config(manifest), workdir, stop_after=KILL_AT)
  assert killed.step == KILL_AT
  # The kill came after step 7; the last checkpoint is step 5, so steps 6 and 7 are redone.
  resumed = _train(_config(manifest), workdir, stop_after=KILL_AT + 5)
  assert [r["step"] for r in resumed.rows] == list(range(EVERY + 1, KILL_AT + 6))
  for row in resumed.rows:
    expected = reference.rows[row["step"] - 1]
    for key in ("loss", "mel", "commit", "grad_norm", "perplexity/q0", "replaced/q1"):
      assert row[key] == expected[key], (row["step"], key)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == list(range(1, KILL_AT + 6))


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
  rows = result.rows
  assert all(np.isfinite([r["loss"], r["disc_loss"], r["adv"], r["fm"]]).all() for r in rows)
  assert all(r["replaced/q0"] == 0 for r in rows)


def test_data_skips_unusable_clips_and_pads_short_ones(manifest, tmp_path):
  """Manifest durations outside the limits are dropped up front; unreadable files are counted at
  load time; a clip shorter than the crop is zero-padded with its valid length."""
  folder = os.path.dirname(manifest)
  with open(manifest) as f:
    good = [json.loads(line) for line in f][:2]
  (tmp_path / "broken.wav").write_text("not audio")
  lines = good + [{"audio": str(tmp_path / "broken.wav"), "text": "x"},
                  {"audio": os.path.join(folder, good[0]["audio"]), "duration": 0.1}]
  for line in good:
    line["audio"] = os.path.join(folder, line["audio"])
  path = tmp_path / "manifest.jsonl"
  path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{not json\n")
  config = _config(str(path))
  limits = train_codec.data_audio.AudioLimits(min_seconds=0.3, max_seconds=60.0)
  records, skips = train_codec.usable_records(str(path), limits)
  assert len(records) == 3 and skips.counts == {"too_short": 1, "malformed_manifest_line": 1}
  cfg = train_codec.codec_from(config)
  crop = 5 * cfg.samples_per_frame * 24  # longer than every clip (~3 s): all get padded
  loader = train_codec.LoadCrop(cfg, crop, limits, len(records))
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
  uninterrupted run. Before, SIGTERM killed the process and steps 1-3 were redone."""
  _, reference = full_run
  workdir = str(tmp_path / "preempted")
  flatten, calls = train_codec.flatten_metrics, []

  def flatten_and_signal(metrics):
    calls.append(1)
    if len(calls) == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return flatten(metrics)

  monkeypatch.setattr(train_codec, "flatten_metrics", flatten_and_signal)
  preempted = _train(_config(manifest), workdir, stop_after=KILL_AT)
  monkeypatch.undo()
  assert (preempted.reason, preempted.step) == ("preempted", 3)
  assert [r["step"] for r in preempted.rows] == [1, 2, 3]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handler is gone
  resumed = _train(_config(manifest), workdir, stop_after=5)
  assert [r["step"] for r in resumed.rows] == [4, 5]
  for row in resumed.rows:
    assert row["loss"] == reference.rows[row["step"] - 1]["loss"], row["step"]
