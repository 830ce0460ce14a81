"""run.json: the model it records, and the resume guard (issue 15 item 5): a resume may not change
the model, the data stream or the optimizer state's layout unless forced."""

import json

import jax
import pytest

from mimo_jax import config, sharding
from mimo_jax.config import ConfigError
from mimo_jax.train import config as train_config
from mimo_jax.train import loop, run_dir, run_json

MESH = sharding.make_mesh("data:1,fsdp:1,tensor:1", devices=jax.devices()[:1])


def _info(cfg=None, model=None, mesh=MESH):
  cfg = cfg or train_config.defaults()
  return run_json.describe(cfg, model or train_config.model_from(cfg), mesh, None)


def _changed(**fields):
  """A defaults() config with dotted fields set, e.g. _changed(**{"train.steps": 5})."""
  cfg = train_config.defaults()
  for dotted, value in fields.items():
    *parents, leaf = dotted.split(".")
    block = cfg
    for p in parents:
      block = block[p]
    block[leaf] = value
  return cfg


def _stored(tmp_path, info):
  run_json.write(str(tmp_path), info)
  return json.loads((tmp_path / run_json.RUN_JSON).read_text())


def test_records_the_model_actually_used_and_reads_it_back(tmp_path):
  imported = config.tiny(hidden_size=96, intermediate_size=160)  # not the config's preset
  stored = _stored(tmp_path, _info(model=imported))
  assert stored["model"]["hidden_size"] == 96
  assert run_json.model_config(stored) == imported
  assert run_json.model_config(stored, dtype="float32").dtype == "float32"
  assert run_json.read(str(tmp_path / "nowhere")) is None


def test_init_from_a_run_takes_the_model_its_run_json_records(tmp_path):
  imported = config.tiny(hidden_size=96)
  run_json.write(str(tmp_path), _info(model=imported))
  cfg = _changed(**{"model.dtype": "float32"})
  model = loop.model_of(cfg, str(tmp_path))
  assert model.hidden_size == 96 and model.dtype == "float32"  # compute fields: this config's
  assert loop.model_of(cfg, str(tmp_path / run_dir.CHECKPOINT_DIR)).hidden_size == 96
  assert loop.model_of(cfg, None) == train_config.model_from(cfg)


@pytest.mark.parametrize("fields, change", [
    ({"model.overrides": {"hidden_size": 96}}, "model.hidden_size: 64 -> 96"),
    ({"model.param_dtype": "bfloat16"}, "model.param_dtype: 'float32' -> 'bfloat16'"),
    ({"train.batch_size": 16}, "train.batch_size: 8 -> 16"),
    ({"train.positions": 64}, "train.positions: 128 -> 64"),
    ({"train.phase": "generation"}, "train.phase: 'understanding' -> 'generation'"),
    ({"data.seed": 3}, "data.seed: 0 -> 3"),
    ({"data.path": "/shards"}, "data.path: '' -> '/shards'"),
    ({"train.lora.rank": 8}, "optimizer.lora_rank: 0 -> 8"),
    ({"train.learning_rates.patch_decoder": 1e-4},
     "optimizer.trained_groups: ['llm', 'patch_encoder'] -> ['llm', 'patch_decoder', "
     "'patch_encoder']"),
])
def test_changes_to_model_data_or_optimizer_layout_are_named(tmp_path, fields, change):
  stored = _stored(tmp_path, _info())
  assert change in run_json.resume_changes(stored, _info(_changed(**fields)))


def test_settings_that_leave_the_run_intact_may_change(tmp_path):
  stored = _stored(tmp_path, _info())
  new = _info(_changed(**{"train.steps": 5000, "train.lr_scale": 0.5, "train.warmup_ratio": 0.1,
                          "train.grad_accum_steps": 2, "model.dtype": "float32",
                          "model.remat_policy": "full", "model.scan_layers": False,
                          "model.attention": "chunked",
                          "log.every_steps": 1, "checkpoint.every_steps": 7,
                          "mesh": "data:1,fsdp:1,tensor:1"}))
  assert run_json.resume_changes(stored, new) == []


def test_check_resume_refuses_then_forced_records_the_changes(tmp_path):
  run_json.write(str(tmp_path), _info())
  new = _info(_changed(**{"train.batch_size": 16}))
  with pytest.raises(ConfigError, match=r"--workdir=.*resuming would change the run "
                                        r"\(train.batch_size: 8 -> 16\).*--force_resume"):
    run_json.check_resume(str(tmp_path), new, force=False)
  forced = run_json.check_resume(str(tmp_path), new, force=True)
  assert forced["forced_resume_changes"] == ["train.batch_size: 8 -> 16"]
  assert run_json.check_resume(str(tmp_path), _info(), force=False) == _info()


def test_a_converted_params_only_run_is_not_resumed(tmp_path):
  run_json.write(str(tmp_path), {"model": _info()["model"], "imported_from": "/official"})
  with pytest.raises(ConfigError, match=r"written by mimo_jax.convert.*--init_from="):
    run_json.check_resume(str(tmp_path), _info(), force=True)
