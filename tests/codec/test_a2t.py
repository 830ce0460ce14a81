"""The audio-to-text (A2T) loss of codec stage 1: it learns, it reaches the encoder, weight 0 is
the recon + commit step, and transcripts that cannot be targets are counted or refused.

The step-level tests use a tiny codec (2 RVQ stages) and random audio; the run-level tests train a
few steps on espeak-ng speech through `mimo_jax.train.codec.train`.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mimo_jax.codec import a2t, checkpoint, config as codec_config, rvq_train, train_step
from mimo_jax.data import corpus, manifest
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.nn.params import init_params
from mimo_jax.train import codec as codec_train
from mimo_jax.train import codec_data
from tests.codec.test_train_codec import _config, _rows

CFG = codec_config.tiny(num_quantizers=2, codebook_size=(16,))
ECFG = rvq_train.EmaConfig.from_codec(CFG, kmeans_iters=5)
A2T = a2t.A2TConfig(vocab_size=32, end_id=31, max_text_tokens=7, d_model=32, n_layers=1,
                    n_heads=2, d_ff=64)
WEIGHTS = train_step.LossWeights(a2t=10.0)


def _batch():
  """Two clips of 12 and 9 code frames (random audio) with transcripts of 5 and 3 ids."""
  rng = np.random.default_rng(0)
  n = CFG.samples_per_frame * 12
  text = np.zeros((2, A2T.max_text_tokens + 1), np.int32)
  text[0], n0 = a2t.target_ids(A2T, np.array([3, 9, 4, 17, 8]))
  text[1], n1 = a2t.target_ids(A2T, np.array([5, 22, 6]))
  return {"wav": jnp.asarray(rng.standard_normal((2, n)).astype(np.float32) * 0.1),
          "lengths": jnp.asarray([n, CFG.samples_per_frame * 9], jnp.int32),
          "text": jnp.asarray(text), "text_lengths": jnp.asarray([n0, n1], jnp.int32)}


def _codec():
  return init_params(checkpoint.codec_specs(CFG), jax.random.key(0))


def _aux():
  return init_params(a2t.a2t_specs(A2T, CFG.d_model), jax.random.key(1))


def test_a2t_loss_falls_when_overfitting_a_tiny_batch():
  tx = optax.adam(3e-3)
  step = train_step.make_stage1_step(CFG, ECFG, tx, WEIGHTS, 0, A2T)
  state = train_step.init_stage1(_codec(), tx, _aux())
  batch = _batch()
  losses, accuracies = [], []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["a2t"]))
    accuracies.append(float(metrics["a2t_accuracy"]))
  assert losses[0] > 0.8 * np.log(A2T.vocab_size)  # about uniform over 32 ids at the start
  assert losses[-1] < 0.2 * losses[0], losses  # measured: 3.49 -> 0.45 in 40 steps
  assert accuracies[-1] > accuracies[0], accuracies
  assert np.isclose(float(metrics["loss"]), float(metrics["mel"]) + float(metrics["commit"])
                    + 10.0 * losses[-1], rtol=1e-6)


def test_weight_zero_is_the_recon_commit_step():
  """With weight 0 the state holds no auxiliary decoder, the batch's text is ignored, and the
  loss is recon * mel + commit * commitment exactly. (Against the step before A2T existed, run
  once on a tiny batch for 3 steps: every metric and state leaf was bit-equal.)"""
  tx = optax.adam(1e-3)
  weights = train_step.LossWeights(recon=0.7, commit=1.3, a2t=0.0)
  step = train_step.make_stage1_step(CFG, ECFG, tx, weights, 0, A2T)
  state = train_step.init_stage1(_codec(), tx)
  assert set(state) == {"step", "codec", "opt"}
  batch = _batch()
  for _ in range(2):
    state, metrics = step(state, batch)
    assert set(state) == {"step", "codec", "opt"} and "a2t" not in metrics
    mel, commit = np.float32(metrics["mel"]), np.float32(metrics["commit"])
    assert np.float32(metrics["loss"]) == np.float32(0.7) * mel + np.float32(1.3) * commit
  with pytest.raises(ValueError, match="holds the auxiliary decoder"):
    step(train_step.init_stage1(_codec(), tx, _aux()), batch)


def test_a2t_gradient_reaches_the_encoder_through_the_quantizer():
  """A2T alone (recon and commit weights 0): every encoder tensor gets a gradient through the
  straight-through quantised frames; the decoder gets none. (The codebooks learn by EMA, not by
  gradient, in every case.)"""
  codec = _codec()
  trainable = {"encoder": codec["encoder"], "decoder": codec["decoder"], "a2t": _aux()}
  weights = train_step.LossWeights(recon=0.0, commit=0.0, a2t=1.0)
  loss = functools.partial(train_step.stage1_loss, cfg=CFG, ecfg=ECFG, weights=weights,
                           a2t_cfg=A2T)
  grads, _ = jax.jit(jax.grad(loss, has_aux=True))(trainable, codec, batch=_batch(),
                                                   key=jax.random.key(0))
  norms = {part: jax.tree.leaves(jax.tree.map(lambda g: float(jnp.max(jnp.abs(g))), grads[part]))
           for part in grads}
  assert all(np.isfinite(n) and n > 0 for n in norms["encoder"]), norms["encoder"]
  assert all(n > 0 for n in norms["a2t"])
  assert all(n == 0 for n in norms["decoder"])


def test_transcripts_without_text_or_too_long_are_counted(tmp_path):
  tokenizer = TextTokenizer.train(["one two three four five six"] * 4, 300)
  cfg = a2t.A2TConfig(vocab_size=tokenizer.vocab_size,
                      end_id=tokenizer.token_to_id("<|endoftext|>"), max_text_tokens=4)
  records = [manifest.Record(key="m:1", audio="a.wav", text="one two"),
             manifest.Record(key="m:2", audio="b.wav", text=""),
             manifest.Record(key="m:3", audio="c.wav", text="one two three four five six")]
  skips = manifest.Skips()
  targets = codec_data.text_targets(records, tokenizer, cfg, skips)
  assert list(targets) == ["m:1"]
  assert dict(skips.counts) == {"no_text": 1, "text_too_long": 1}
  row, count = targets["m:1"]
  ids = tokenizer.encode("one two", special=False)
  assert count == len(ids) + 1 and row.shape == (5,)
  np.testing.assert_array_equal(row[:count], np.append(ids, cfg.end_id))
  assert not np.any(row[count:])


@pytest.fixture(scope="module")
def a2t_setup(tmp_path_factory):
  """An espeak-ng corpus of 6 clips, a text tokenizer trained on its transcripts, and a stage-1
  config with A2T on whole clips."""
  root = tmp_path_factory.mktemp("a2t")
  path = corpus.build_corpus(str(root / "corpus"), 6, seed=2, languages=("en",))
  with open(path) as f:
    lines = [json.loads(line) for line in f]
  tokenizer = TextTokenizer.train([line["text"] for line in lines], 300)
  tokenizer.save(str(root / "tok"))
  config = _config(path, steps=4, checkpoint_every=2)
  config.loss.a2t = 10.0
  config.a2t.update(tokenizer=str(root / "tok"), d_model=32, layers=1, heads=2, d_ff=64)
  config.data.update(whole_clips=True, batch_size=2,
                     crop_seconds=max(line["duration"] for line in lines) + 0.1)
  return config, lines, os.path.dirname(path)


def test_a2t_run_resumes_exactly_and_exports_no_auxiliary_weights(a2t_setup, tmp_path):
  config, _, _ = a2t_setup
  full = codec_train.train(config, str(tmp_path / "full"), devices=jax.devices()[:1])
  assert set(full.state) == {"step", "codec", "a2t", "opt", "bad_steps", "skipped_steps"}
  full_rows = _rows(str(tmp_path / "full"))
  assert all(np.isfinite(r["a2t"]) and r["a2t"] > 0 for r in full_rows)
  workdir = str(tmp_path / "killed")
  killed = codec_train.train(config, workdir, devices=jax.devices()[:1], max_steps=3)
  assert killed.checkpoint_step == 2
  codec_train.train(config, workdir, devices=jax.devices()[:1])
  rows = _rows(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]  # 3 redone from checkpoint 2, logged once
  for row in rows[2:]:
    for key in ("loss", "a2t", "mel", "grad_norm"):
      assert row[key] == full_rows[row["step"] - 1][key], (row["step"], key)
  exported, _ = checkpoint.import_codec(str(tmp_path / "full" / "export"))
  assert set(exported) == set(checkpoint.codec_specs(codec_train.codec_from(config)))
  jax.tree.map(np.testing.assert_array_equal, exported["encoder"],
               jax.device_get(full.state["codec"]["encoder"]))


def test_a2t_config_and_manifest_errors_name_the_field(a2t_setup, tmp_path):
  config, lines, folder = a2t_setup
  cases = [({"data.whole_clips": False}, "config.data.whole_clips"),
           ({"a2t.tokenizer": ""}, "config.a2t.tokenizer"),
           ({"a2t.tokenizer": str(tmp_path / "nowhere")}, "config.a2t.tokenizer"),
           ({"loss.a2t": -1.0}, "config.loss.a2t")]
  for changes, field in cases:
    bad = ml_collections.ConfigDict(config.to_dict())
    for name, value in changes.items():
      block, key = name.split(".")
      bad[block][key] = value
    with pytest.raises(codec_data.CodecTrainError, match=field):
      codec_train.train(bad, str(tmp_path / "run"), devices=jax.devices()[:1])
  untranscribed = tmp_path / "untranscribed.jsonl"
  untranscribed.write_text("".join(json.dumps({"audio": os.path.join(folder, line["audio"])})
                                   + "\n" for line in lines))
  bad = ml_collections.ConfigDict(config.to_dict())
  bad.data.manifest = str(untranscribed)
  with pytest.raises(codec_data.CodecTrainError,
                     match=r"config.data.manifest: no usable audio with a transcript.*no_text"):
    codec_train.train(bad, str(tmp_path / "run"), devices=jax.devices()[:1])
