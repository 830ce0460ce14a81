"""The two-phase loss: against the official logits, chunked vs plain, phase-1 isolation of the
patch decoder, packing, sharding, and a tiny model overfitting one interleaved batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mimo_jax import config, sharding
from mimo_jax.config import LossConfig
from mimo_jax.convert.hf import import_checkpoint
from mimo_jax.lm import loss, model
from mimo_jax.nn.params import logical_axes
from tests.helpers import random_params

EMPTY_ID = 412  # `<|empty|>` of the fixture's text tokenizer
WEIGHTS = (100, 12, 8, 6, 4, 2, 2, 1, 1)
DECODER_PARTS = ("local_transformer", "local_transformer_lm_heads", "hidden_states_downcast")


@pytest.fixture(scope="module")
def official(official_tiny_lm_dir):
  # The fixture's patch-decoder logits were conditioned on the official (bf16-summed) path.
  cfg = config.load_config(official_tiny_lm_dir, dtype="float32", official_bf16_speech_sum=True)
  params, _ = import_checkpoint(official_tiny_lm_dir, cfg, specs_fn=model.param_specs)
  return cfg, params, dict(np.load(f"{official_tiny_lm_dir}/io.npz"))


def _cross_entropy(logits, targets):
  logits = logits.astype(np.float64)
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  return logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def test_loss_matches_cross_entropy_of_the_official_logits(official):
  cfg, params, io = official
  text_p = io["input_ids"][0, ::4]
  targets = text_p[1:]
  text_nll = _cross_entropy(io["text_logits"][:-1], targets)
  weights = np.where(targets == EMPTY_ID, 0.01, 1.0)
  expected_text = (text_nll * weights).sum() / weights.sum()
  patch_codes = io["input_ids"][1:].reshape(8, -1, 4).transpose(1, 2, 0)[io["audio_positions"]]
  expected_audio = [_cross_entropy(io[f"local_logits_c{ch}"], patch_codes[..., ch]).mean()
                    for ch in range(8)]
  expected_total = (100 * expected_text + np.dot(WEIGHTS[1:], expected_audio)) / sum(WEIGHTS)

  batch = {"input_ids": io["input_ids"][None]}
  run = jax.jit(lambda p, phase: loss.loss(p, cfg, LossConfig(phase), batch, EMPTY_ID),
                static_argnums=1)
  total, metrics = run(params, "generation")
  np.testing.assert_allclose(metrics["text_loss"], expected_text, rtol=1e-5)
  for ch in range(8):
    np.testing.assert_allclose(metrics[f"audio_loss_c{ch}"], expected_audio[ch], rtol=1e-5)
  np.testing.assert_allclose(total, expected_total, rtol=1e-5)
  phase1, metrics1 = run(params, "understanding")
  np.testing.assert_allclose(phase1, expected_text, rtol=1e-5)
  assert not any(k.startswith("audio") for k in metrics1)


def test_chunked_text_loss_equals_plain_loss_and_gradients():
  rng = np.random.RandomState(0)
  b, p, d, v = 2, 14, 16, 300
  params = {"lm_head": {"kernel": rng.randn(d, v).astype(np.float32)}}
  hidden = rng.randn(b, p, d).astype(np.float32)
  targets = rng.randint(0, v, (b, p))
  targets[:, ::3] = 7  # a few `<|empty|>` targets (id 7 here)
  weights = np.where(targets == 7, 0.01, 1.0) * (rng.rand(b, p) > 0.2)

  def value_and_grads(chunk):
    fn = lambda prm, h: loss.text_loss(prm, h, targets, weights, 7, chunk)
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))(params, hidden)

  (plain, plain_metrics), plain_grads = value_and_grads(0)
  for chunk in (3, 5, 14):  # 14 positions: uneven chunks exercise the padding
    (chunked, metrics), grads = value_and_grads(chunk)
    np.testing.assert_allclose(chunked, plain, atol=1e-5, rtol=0)
    for key in plain_metrics:
      np.testing.assert_allclose(metrics[key], plain_metrics[key], atol=1e-5, rtol=0)
    for a, b_ in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
      np.testing.assert_allclose(a, b_, atol=1e-5, rtol=0)


def test_phase1_never_touches_the_patch_decoder_and_phase2_trains_everything(official):
  cfg, params, io = official
  batch = {"input_ids": io["input_ids"][None]}
  without_decoder = {k: v for k, v in params.items() if k not in DECODER_PARTS}
  phase1 = jax.jit(lambda p: loss.loss(p, cfg, LossConfig("understanding"), batch, EMPTY_ID)[0])
  # The patch decoder's parameters are not even read: the loss runs without them.
  np.testing.assert_allclose(phase1(without_decoder), phase1(params), rtol=0)
  grads1 = jax.jit(jax.grad(phase1))(params)
  for part in DECODER_PARTS:
    assert all(not np.any(g) for g in jax.tree.leaves(grads1[part])), part

  grads2 = jax.jit(jax.grad(
      lambda p: loss.loss(p, cfg, LossConfig("generation"), batch, EMPTY_ID)[0]))(params)
  for path, g in jax.tree_util.tree_flatten_with_path(grads2)[0]:
    name = jax.tree_util.keystr(path)
    if "k_proj" in name and "bias" in name:
      continue  # a key bias shifts every score of a query equally: softmax ignores it
    assert np.any(np.asarray(g) != 0), name


def _interleaved_batch(cfg, rng, n_positions=12, rows=2):
  """Rows alternating text tokens and audio patches, in the official [1 + c, g * p] layout."""
  input_ids = np.full((rows, 9, 4 * n_positions), -100, np.int32)
  input_ids[:, 1:] = np.asarray(cfg.speech_zeroemb_idx)[:, None]
  for r in range(rows):
    for p in range(n_positions):
      if rng.rand() < 0.5:
        input_ids[r, 0, 4 * p] = EMPTY_ID
        input_ids[r, 1:, 4 * p:4 * p + 4] = rng.randint(0, np.asarray(cfg.speech_zeroemb_idx)[:,
                                                                                            None],
                                                         (8, 4))
      else:
        input_ids[r, 0, 4 * p] = rng.randint(0, 400)
  return input_ids


def test_packed_rows_give_the_same_loss_as_separate_rows():
  cfg = config.tiny()
  params = random_params(model.param_specs(cfg))
  rows = _interleaved_batch(cfg, np.random.RandomState(0), n_positions=6)
  separate = {"input_ids": np.concatenate([rows, np.zeros_like(rows)], axis=2),
              "segment_ids": np.repeat(np.array([[1] * 6 + [0] * 6]), 2, axis=0)}
  packed = {"input_ids": np.concatenate([rows[0], rows[1]], axis=1)[None],
            "segment_ids": np.array([[1] * 6 + [2] * 6]),
            "positions": np.array([list(range(6)) * 2])}
  run = jax.jit(lambda p, b: loss.loss(p, cfg, LossConfig("generation"), b, EMPTY_ID))
  total_sep, metrics_sep = run(params, separate)
  total_packed, metrics_packed = run(params, packed)
  np.testing.assert_allclose(total_packed, total_sep, atol=1e-5, rtol=0)
  for key in metrics_sep:
    np.testing.assert_allclose(metrics_packed[key], metrics_sep[key], atol=1e-5, rtol=0,
                               err_msg=key)


def test_sharded_loss_equals_single_device():
  cfg = config.tiny()
  specs = model.param_specs(cfg)
  params = random_params(specs)
  batch = {"input_ids": _interleaved_batch(cfg, np.random.RandomState(1), rows=8)}
  fn = lambda p, b: loss.loss(p, cfg, LossConfig("generation", text_chunk_size=4), b, EMPTY_ID)
  expected, _ = fn(params, batch)
  mesh = sharding.make_mesh("data:2,fsdp:2,tensor:2")
  sharded = sharding.shard_params(params, logical_axes(specs), mesh)
  sharded_batch = {"input_ids": sharding.shard_params(batch["input_ids"], ("batch", None, None),
                                                      mesh)}
  with jax.set_mesh(mesh):
    total, _ = jax.jit(fn)(sharded, sharded_batch)
  np.testing.assert_allclose(total, expected, atol=1e-5, rtol=0)


def test_tiny_model_overfits_one_interleaved_batch():
  cfg = config.tiny()
  params = random_params(model.param_specs(cfg))
  batch = {"input_ids": _interleaved_batch(cfg, np.random.RandomState(2))}
  lcfg = LossConfig("generation", empty_loss_weight=1.0)
  optimizer = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    (_, metrics), grads = jax.value_and_grad(
        lambda p: loss.loss(p, cfg, lcfg, batch, EMPTY_ID), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state = optimizer.init(params)
  for _ in range(300):
    params, opt_state, metrics = step(params, opt_state)
  for name in ["text_loss"] + [f"audio_loss_c{ch}" for ch in range(8)]:
    assert metrics[name] < 0.05, (name, float(metrics[name]))
  assert metrics["text_acc"] == 1 and metrics["empty_acc"] == 1


def test_local_attention_dropout_needs_a_key_and_follows_it():
  cfg = config.tiny()
  assert cfg.local_attn_dropout == 0.1  # the official value
  params = random_params(model.param_specs(cfg))
  batch = {"input_ids": _interleaved_batch(cfg, np.random.RandomState(1), n_positions=8)}

  def metrics(model_cfg):
    return jax.jit(lambda p, k: loss.loss(p, model_cfg, LossConfig("generation"), batch,
                                          EMPTY_ID, dropout_key=k)[1])

  official = metrics(cfg)
  run = lambda seed: {name: np.asarray(v) for name, v in official(params, jax.random.key(seed))
                      .items()}
  first, again, other = run(0), run(0), run(1)
  deterministic = official(params, None)  # evaluation: no key
  for name in ("text_loss", "audio_loss_c0", "audio_loss_c7"):
    assert first[name] == again[name], name  # the same key: the same draw
    assert first[name] != other[name], name  # encoder dropout reaches the text loss too
    assert first[name] != deterministic[name], name
  # Rate 0 with a key equals the computation without dropout exactly.
  rate_zero = metrics(cfg.replace(local_attn_dropout=0.0))(params, jax.random.key(0))
  for name, value in deterministic.items():
    np.testing.assert_array_equal(rate_zero[name], value, err_msg=name)


def test_with_codes_writes_back_what_split_channels_reads():
  cfg = config.tiny()
  input_ids = _interleaved_batch(cfg, np.random.RandomState(3), n_positions=5)
  text_bp, codes_bpgc = model.split_channels(jnp.asarray(input_ids), cfg)
  np.testing.assert_array_equal(model.with_codes(jnp.asarray(input_ids), codes_bpgc), input_ids)
  shifted_bpgc = (codes_bpgc + 1) % 7
  rewritten = model.with_codes(jnp.asarray(input_ids), shifted_bpgc)
  np.testing.assert_array_equal(rewritten[:, 0], input_ids[:, 0])  # the text row is kept
  np.testing.assert_array_equal(model.split_channels(rewritten, cfg)[1], shifted_bpgc)


def test_corrupt_codes_replaces_each_channel_at_its_rate_and_keeps_empty_ids():
  cfg = config.tiny()
  empty_c = np.asarray(cfg.speech_zeroemb_idx)
  rng = np.random.RandomState(4)
  codes_bpgc = rng.randint(0, empty_c, (8, 64, 4, 8))
  codes_bpgc[:, ::3] = empty_c  # every third position holds no audio
  noise_c = (0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0)
  noisy_bpgc = np.asarray(loss.corrupt_codes(jnp.asarray(codes_bpgc), noise_c, cfg,
                                             jax.random.key(0)))
  is_empty = codes_bpgc == empty_c
  np.testing.assert_array_equal(noisy_bpgc[is_empty], codes_bpgc[is_empty])
  assert np.all(noisy_bpgc[~is_empty] < np.broadcast_to(empty_c, codes_bpgc.shape)[~is_empty])
  changed_c = [np.mean((noisy_bpgc != codes_bpgc)[..., ch][~is_empty[..., ch]]) for ch in range(8)]
  np.testing.assert_array_equal(changed_c[:4], 0)
  # A replaced code is drawn from the whole codebook, so it keeps its value 1 / size of the time.
  for ch in range(4, 8):
    expected = noise_c[ch] * (1 - 1 / empty_c[ch])
    assert abs(changed_c[ch] - expected) < 0.03, (ch, changed_c[ch], expected)


def test_input_code_noise_changes_what_the_model_reads_not_what_it_is_scored_on():
  cfg = config.tiny().replace(local_attn_dropout=0.0)
  params = random_params(model.param_specs(cfg))
  batch = {"input_ids": _interleaved_batch(cfg, np.random.RandomState(5), n_positions=8)}
  noise_c = (0.3,) * 8
  run = lambda noise, b, key: jax.jit(lambda p: loss.loss(
      p, cfg, LossConfig("generation", input_code_noise=noise), b, EMPTY_ID, dropout_key=key)[1]
  )(params)
  clean = run(None, batch, jax.random.key(0))
  # Evaluation (no key) and a rate of 0 read the clean codes: the same computation exactly.
  for other in (run(noise_c, batch, None), run((0.0,) * 8, batch, jax.random.key(0))):
    for name, value in clean.items():
      np.testing.assert_array_equal(other[name], value, err_msg=name)
  noisy = run(noise_c, batch, jax.random.key(0))
  # The same noisy codes written into the batch (so they are the targets too), without noise.
  _, codes_bpgc = model.split_channels(jnp.asarray(batch["input_ids"]), cfg)
  noisy_codes = loss.corrupt_codes(codes_bpgc, noise_c, cfg, jax.random.fold_in(
      jax.random.key(0), 1))
  as_targets = run(None, {"input_ids": model.with_codes(jnp.asarray(batch["input_ids"]),
                                                        noisy_codes)}, jax.random.key(0))
  # The backbone read exactly those codes (its text loss is the same), ...
  np.testing.assert_allclose(noisy["text_loss"], as_targets["text_loss"], atol=1e-6, rtol=0)
  assert noisy["text_loss"] != clean["text_loss"]
  # ... and the patch decoder was scored on the clean codes, not the noisy ones.
  for ch in range(8):
    assert noisy[f"audio_loss_c{ch}"] != as_targets[f"audio_loss_c{ch}"], ch
