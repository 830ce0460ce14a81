"""Config schema, optimizer groups and schedules, LoRA, and the launcher's checks of bad input."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mimo_jax import sharding
from mimo_jax.config import ConfigError
from mimo_jax.nn.params import ParamSpec, is_spec
from mimo_jax.sharding import MeshError
from mimo_jax.train import config as train_config
from mimo_jax.train import loop, lora, optimizer
from mimo_jax.train.state import TrainSetup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


def tiny_config(**train):
  cfg = train_config.load_file(os.path.join(CONFIGS, "tiny.py"))
  for key, value in train.items():
    cfg.train[key] = value
  return cfg


@pytest.mark.parametrize("name", ["tiny.py", "small_1b.py"])
def test_experiment_configs_validate(name):
  cfg = train_config.load_file(os.path.join(CONFIGS, name))
  train_config.validate(cfg)
  assert TrainSetup.from_config(cfg).model.hidden_size > 0


def test_phase_defaults_follow_the_spec():
  cfg = train_config.defaults()
  for phase, lrs in train_config.PHASE_LEARNING_RATES.items():
    cfg.train.phase = phase
    opt = train_config.optimizer_from(cfg)
    assert dict(opt.learning_rates) == {g: lr or 0.0 for g, lr in lrs.items()}
    assert opt.schedule == ("constant" if phase == "understanding" else "cosine")
  assert (opt.b1, opt.b2, opt.weight_decay, opt.clip_norm) == (0.9, 0.95, 0.1, 1.0)
  cfg.train.steps = 1000
  assert train_config.optimizer_from(cfg).warmup_steps == 10  # warm-up ratio 0.01


@pytest.mark.parametrize("field, value, message", [
    ("phase", "pretrain", "config.train.phase"),
    ("batch_size", 0, "config.train.batch_size"),
    ("grad_accum_steps", 3, "config.train.batch_size: 8 is not divisible"),
    ("schedule", "linear", "config.train.schedule"),
    ("warmup_ratio", 1.5, "config.train.warmup_ratio"),
])
def test_bad_train_fields_are_named(field, value, message):
  cfg = tiny_config(**{field: value})
  with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
    train_config.validate(cfg)


@pytest.mark.parametrize("noise, message", [
    ((0.5,) * 7, "needs 8 entries"),
    ((0.0,) * 7 + (1.5,), "needs probabilities in"),
])
def test_bad_input_code_noise_is_named(noise, message):
  cfg = tiny_config()
  cfg.loss.input_code_noise = noise
  with pytest.raises(ConfigError, match=r"config\.loss\.input_code_noise: " + message):
    train_config.validate(cfg)


def test_bad_model_override_is_named():
  cfg = tiny_config()
  cfg.model.overrides = {"hidden_sise": 64}
  with pytest.raises(ConfigError, match=r"config\.model\.overrides"):
    train_config.validate(cfg)


def test_groups_cover_every_parameter_and_decay_only_matrices():
  setup = TrainSetup.from_config(tiny_config(phase="generation"))
  specs = setup.trainable_specs
  labels = optimizer.labels(specs)
  by_top = {key: set(jax.tree.leaves(sub)) for key, sub in labels["params"].items()}
  assert by_top["model"] == by_top["lm_head"] == {"llm"}
  assert by_top["input_local_transformer"] == by_top["speech_embeddings"] == {"patch_encoder"}
  assert by_top["local_transformer"] == by_top["local_transformer_lm_heads"] == {"patch_decoder"}
  mask = optimizer.decay_mask(specs)["params"]
  layer = mask["model"]["layers"]
  assert layer["self_attn"]["q_proj"]["kernel"] and not layer["self_attn"]["q_proj"]["bias"]
  assert not layer["input_layernorm"]["scale"] and not mask["model"]["norm"]["scale"]
  assert mask["model"]["embed_tokens"]["embedding"] and mask["lm_head"]["kernel"]


def test_phase_1_and_lora_freeze_by_leaving_parameters_out():
  frozen = lambda specs: {k for k, v in specs["params"].items()
                          if all(x is None for x in jax.tree.leaves(
                              v, is_leaf=lambda x: x is None or is_spec(x)))}
  phase1 = TrainSetup.from_config(tiny_config(phase="understanding")).trainable_specs
  assert frozen(phase1) == {"local_transformer", "local_transformer_lm_heads",
                            "hidden_states_downcast"}
  cfg = tiny_config(phase="generation")
  cfg.train.lora.rank = 4
  cfg.train.lora.targets = "q_proj,down_proj"
  with_lora = TrainSetup.from_config(cfg).trainable_specs
  assert frozen(with_lora) == {"model", "lm_head"}
  assert set(with_lora["lora"]["model"]["layers"]["self_attn"]) == {"q_proj"}
  assert set(with_lora["lora"]["model"]["layers"]["mlp"]) == {"down_proj"}
  assert set(jax.tree.leaves(optimizer.labels(with_lora)["lora"])) == {"llm"}


def test_schedules_warm_up_then_hold_or_decay():
  cfg = tiny_config(steps=100, warmup_ratio=0.1, schedule="constant")
  opt = train_config.optimizer_from(cfg)
  sched = optimizer.schedule(opt, 1e-3)
  np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(99)],
                             [0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
  cfg.train.schedule = "cosine"
  sched = optimizer.schedule(train_config.optimizer_from(cfg), 1e-3)
  np.testing.assert_allclose([sched(10), sched(100)], [1e-3, 1e-4], rtol=1e-5)  # final ratio 0.1


def test_update_is_adamw_with_global_clipping_and_group_learning_rates():
  """One update against optax.adamw per group after clipping the whole gradient."""
  specs = {"params": {"model": {"w": ParamSpec((3, 4), ("embed", "mlp")),
                                "b": ParamSpec((2, 4), ("layers", "mlp"))},
                      "local_transformer": {"w": ParamSpec((4, 2), ("embed", "mlp"))}}}
  cfg = tiny_config(phase="generation", warmup_ratio=0.0, schedule="constant")
  opt = train_config.optimizer_from(cfg)
  keys = iter(jax.random.split(jax.random.key(1), 6))
  params = jax.tree.map(lambda s: jax.random.normal(next(keys), s.shape), specs, is_leaf=is_spec)
  grads = jax.tree.map(lambda p: 3.0 * jax.random.normal(next(keys), p.shape), params)
  tx = optimizer.make(opt, specs)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)

  clipped, _ = optax.clip_by_global_norm(opt.clip_norm).update(grads, optax.EmptyState())
  for top, group in (("model", "llm"), ("local_transformer", "patch_decoder")):
    mask = {k: v.ndim == 2 and k == "w" for k, v in params["params"][top].items()}
    ref_tx = optax.adamw(opt.lr(group), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                         weight_decay=opt.weight_decay, mask=mask)
    p, g = params["params"][top], clipped["params"][top]
    ref, _ = jax.jit(ref_tx.update)(g, ref_tx.init(p), p)
    for k in p:
      np.testing.assert_allclose(updates["params"][top][k], ref[k], atol=1e-7, rtol=1e-6)


def test_lora_merge():
  cfg = tiny_config()
  cfg.train.lora.rank = 2
  setup = TrainSetup.from_config(cfg)
  rng = np.random.default_rng(0)
  draw = lambda spec: (np.zeros(spec.shape, np.float32) if spec.init == "zeros" else
                       rng.normal(0, 0.02, spec.shape).astype(np.float32))
  params = jax.tree.map(draw, setup.model_specs, is_leaf=is_spec)
  adapters = jax.tree.map(draw, setup.lora_specs, is_leaf=is_spec)
  same = lora.merge(params, adapters, 2, 16.0)  # B starts at zero: the base model exactly
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same)):
    np.testing.assert_array_equal(a, b)
  adapters = jax.tree.map(lambda x: x + 0.01, adapters)
  merged = lora.merge(params, adapters, 2, 16.0)
  q = adapters["model"]["layers"]["self_attn"]["q_proj"]
  want = (params["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
          + 8.0 * jnp.einsum("ldr,lre->lde", q["a"], q["b"]))
  np.testing.assert_allclose(merged["model"]["layers"]["self_attn"]["q_proj"]["kernel"], want,
                             atol=1e-6)
  np.testing.assert_array_equal(merged["lm_head"]["kernel"], params["lm_head"]["kernel"])
  # The export's streamed merge, one layer at a time.
  streamed = lora.merged_view(params, adapters, 2, 16.0)["model"]["layers"]["self_attn"]["q_proj"]
  for layer in range(want.shape[0]):
    np.testing.assert_allclose(streamed["kernel"][layer], want[layer], atol=1e-6)


def test_bad_lora_target_is_named():
  cfg = tiny_config()
  cfg.train.lora.rank = 2
  cfg.train.lora.targets = "q_proj,qkv"
  with pytest.raises(ConfigError, match=r"config\.train\.lora\.targets: unknown projection 'qkv'"):
    TrainSetup.from_config(cfg).lora_specs


# --- the launcher's start-up checks (all fail before anything is compiled) -------------------
def test_impossible_mesh_fails_at_start(tmp_path):
  with pytest.raises(MeshError, match=r"--mesh='data:1,fsdp:3,tensor:1'"):
    loop.train(tiny_config(), str(tmp_path), mesh_flag="data:1,fsdp:3,tensor:1")


def test_unwritable_workdir_fails_at_start(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  with pytest.raises(ConfigError, match=r"--workdir=.*a_file/run: not writable"):
    loop.train(tiny_config(), str(blocker / "run"))


def test_batch_not_divisible_by_devices_fails_at_start(tmp_path):
  with pytest.raises(ConfigError, match=r"config\.train\.batch_size: 6 sequences do not divide "
                                        r"over the mesh's 8 data-parallel shards"):
    loop.train(tiny_config(batch_size=6), str(tmp_path), mesh_flag="data:1,fsdp:8,tensor:1")


def test_unknown_config_file_is_named():
  with pytest.raises(ConfigError, match=r"--config=.*nope\.py: no such file"):
    train_config.load_file(os.path.join(CONFIGS, "nope.py"))


def test_local_rows_of_a_batch_sharding():
  mesh = sharding.make_mesh("data:1,fsdp:4,tensor:2")
  from mimo_jax.data import pipeline
  from mimo_jax.train import data
  shardings = pipeline.batch_shardings(mesh)
  assert data.local_rows(shardings["input_ids"], (8, 9, 16)) == (0, 8)  # one process: all rows


def test_shards_source_gives_the_step_its_batches_and_empty_id(tmp_path):
  """`data.source: shards` is the data pipeline over pre-tokenised shards, with the tokenizer's
  `<|empty|>` id."""
  from mimo_jax.data import pretokenize
  from mimo_jax.data.tokenizer import TextTokenizer
  from mimo_jax.train import data
  words = "the quick brown fox jumps over a lazy dog".split()
  tokenizer = TextTokenizer.train([" ".join(words)] * 4, vocab_size=320)
  tokenizer.save(str(tmp_path / "tokenizer"))
  rng = np.random.default_rng(0)
  records = []
  for i in range(24):
    codes = np.stack([rng.integers(0, 1024 if c < 2 else 128, 20) for c in range(8)], 1)
    text = " ".join(rng.choice(words, 4))
    records.append(pretokenize.serialize({
        "key": str(i), "audio": f"{i}.wav", "text": text, "speaker": "s", "language": "en",
        "task": "", "seconds": 0.8, "codes": codes.astype(np.uint16),
        "text_ids": tokenizer.encode(text, special=False)}))
  pretokenize.write_shard(tmp_path / pretokenize.shard_name(0, 1), records)
  cfg = tiny_config(phase="generation", batch_size=8, positions=48)
  cfg.data.source, cfg.data.path = "shards", str(tmp_path)
  cfg.data.tokenizer = str(tmp_path / "tokenizer")
  mesh = sharding.make_mesh("data:1,fsdp:8,tensor:1")
  setup = TrainSetup.from_config(cfg)
  source = data.make_source(cfg, setup.model, mesh)
  assert source.empty_id == tokenizer.special_tokens.empty
  batch = next(source.iterator)
  from mimo_jax.train.step import batch_shapes
  shapes = batch_shapes(setup, 8, 48)
  assert {k: v.shape for k, v in batch.items()} == shapes
  assert batch["input_ids"].sharding.spec == sharding.logical_to_spec(("batch", None, None))
  assert np.any(np.asarray(batch["input_ids"])[:, 0] == source.empty_id)  # audio positions

  cfg.data.path = str(tmp_path / "empty")
  with pytest.raises(ConfigError, match=r"config\.data\.path: no pre-tokenised shards"):
    data.make_source(cfg, setup.model, mesh)
