"""Configs that cannot run fail validation with a ConfigError naming the field; shards the model
cannot read fail before training starts."""

import json

import pytest

from mimo_jax import config as model_config
from mimo_jax.config import ConfigError
from mimo_jax.train import config as train_config
from mimo_jax.train import data


def _defaults(**fields):
  cfg = train_config.defaults()
  cfg.data.empty_id = 7  # a text id of the tiny preset's 512-entry vocabulary
  for path, value in fields.items():
    block, name = path.split("__")
    cfg[block][name] = value
  return cfg


def test_the_defaults_fail_on_empty_id_instead_of_inside_numpy():
  """defaults() (tiny preset, 512 ids) with the MiMo <|empty|> id 151667 used to pass and then
  die in the synthetic source with numpy's 'low >= high'."""
  with pytest.raises(ConfigError, match=r"config\.data\.empty_id: .*151667 leaves none below "
                                        r"the model's vocab_size 512"):
    train_config.validate(train_config.defaults())
  cfg = _defaults()
  train_config.validate(cfg)
  model = train_config.model_from(cfg)
  example = data.synthetic_example(model, 16, cfg.data.audio_share, cfg.data.empty_id, 0, 0)
  assert example["input_ids"].shape == (1 + model.audio_channels, model.group_size * 16)


@pytest.mark.parametrize("field, value, message", [
    ("data__empty_id", 511, r"config\.data\.empty_id"),
    ("data__audio_share", 1.5, r"config\.data\.audio_share"),
    ("data__synthetic_examples", 0, r"config\.data\.synthetic_examples"),
    ("data__max_skip_fraction", 0.0, r"config\.data\.max_skip_fraction"),
    ("data__max_empty_windows", 0, r"config\.data\.max_empty_windows"),
    ("checkpoint__sigterm_grace_s", 0, r"config\.checkpoint\.sigterm_grace_s"),
    ("train__adam_b2", 1.0, r"config\.train\.adam_b2"),
    ("train__adam_eps", 0.0, r"config\.train\.adam_eps"),
    ("loss__empty_loss_weight", 2.0, r"config\.loss\.empty_loss_weight"),
    ("loss__text_chunk_size", -1, r"config\.loss\.text_chunk_size"),
    ("model__dtype", "float8", r"config\.model\.dtype"),
    ("model__preset", "huge", r"config\.model\.preset: .*unknown preset 'huge'"),
])
def test_fields_that_cannot_run_are_named(field, value, message):
  with pytest.raises(ConfigError, match=message):
    train_config.validate(_defaults(**{field: value}))


def test_bad_model_shapes_and_lora_alpha_are_named():
  cfg = _defaults()
  cfg.model.overrides = {"head_dim": 7}
  with pytest.raises(ConfigError, match=r"config\.model\.overrides\.head_dim"):
    train_config.validate(cfg)
  cfg = _defaults()
  cfg.train.lora.rank, cfg.train.lora.alpha = 4, 0.0
  with pytest.raises(ConfigError, match=r"config\.train\.lora\.alpha"):
    train_config.validate(cfg)


def _plan(tmp_path, n_q, sizes):
  (tmp_path / "plan.json").write_text(json.dumps(
      {"n_q": n_q, "codec": {"codebook_sizes": sizes}}))
  return str(tmp_path)


def test_shards_of_another_codec_are_refused_before_training(tmp_path):
  model = model_config.preset("tiny")
  data.check_codes_fit(_plan(tmp_path, 8, [1024, 1024] + [128] * 18), model)  # fits
  with pytest.raises(ConfigError, match=r"config\.data\.path: .* hold codes of 8 RVQ stages "
                                        r"with codebook sizes \(2048, 2048, 128"):
    data.check_codes_fit(_plan(tmp_path, 8, [2048, 2048] + [128] * 18), model)
  with pytest.raises(ConfigError, match=r"codes of 4 RVQ stages.*the model reads 8 channels"):
    data.check_codes_fit(_plan(tmp_path, 4, [1024, 1024] + [128] * 18), model)
