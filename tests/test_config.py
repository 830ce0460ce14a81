"""Config presets, the official config.json round trip, and messages that name the bad field."""

import json

import pytest
import transformers

from mimo_jax import config
from mimo_jax.config import ConfigError, MimoAudioConfig


def test_7b_preset_has_the_released_numbers():
  cfg = config.preset("7b")
  assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
          cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size) == (
              4096, 36, 32, 8, 128, 11008, 151680)
  assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.tie_word_embeddings) == (640000.0, 1e-6, False)
  assert cfg.patch_encoder.d_model == 1024 and cfg.patch_encoder.n_layers == 6
  assert cfg.patch_encoder.n_heads == 64 and cfg.patch_encoder.head_dim == 16
  assert cfg.patch_encoder.d_ff == 4096 and not cfg.patch_encoder.causal
  assert cfg.patch_decoder.n_layers == 16 and cfg.patch_decoder.causal
  assert cfg.backbone.causal and cfg.backbone.n_kv_heads == 8


def test_official_fixture_config_reads_as_the_tiny_preset(official_tiny_lm_dir):
  assert config.load_config(official_tiny_lm_dir, dtype="float32") == config.tiny()


def test_config_json_round_trip_and_transformers_reads_it(tmp_path):
  cfg = config.preset("7b")
  config.save_config(cfg, str(tmp_path))
  assert config.load_config(str(tmp_path)) == cfg
  raw = json.loads((tmp_path / "config.json").read_text())
  assert raw["input_full_attention"] is True
  assert raw["speech_vocab_size"] == "1025-1025-129-129-129-129-129-129"
  assert raw["speech_zeroemb_idx"] == "1024-1024-128-128-128-128-128-128"
  assert raw["delay_pattern"] == "0-1-2-3-4-5-6-7"
  assert raw["architectures"] == ["MiMoAudioForCausalLM"] and raw["model_type"] == "qwen2"
  assert not {"dtype", "param_dtype", "remat_policy", "scan_layers"} & set(raw)
  hf = transformers.AutoConfig.from_pretrained(str(tmp_path))
  assert isinstance(hf, transformers.Qwen2Config)
  assert (hf.hidden_size, hf.num_key_value_heads, hf.vocab_size) == (4096, 8, 151680)
  assert hf.input_full_attention is True and hf.local_layers == 16


def test_missing_input_full_attention_follows_the_official_reading(tmp_path):
  raw = config.tiny().to_official_dict()
  del raw["input_full_attention"]
  (tmp_path / "config.json").write_text(json.dumps(raw))
  assert config.load_config(str(tmp_path)).patch_encoder.causal


@pytest.mark.parametrize("changes, message", [
    ({"num_key_value_heads": 3}, "num_key_value_heads: 3 does not divide num_attention_heads 4"),
    ({"hidden_size": 0}, "hidden_size: must be a positive integer"),
    ({"head_dim": 15}, "head_dim: RoPE needs an even head_dim"),
    ({"local_dim": 30}, "local_dim: 30 is not divisible by local_attn_heads 4"),
    ({"delay_pattern": (0, 1)}, r"delay_pattern: needs one entry per audio channel \(8\)"),
    ({"speech_zeroemb_idx": (1025,) + (128,) * 7}, "speech_zeroemb_idx: channel 0: empty id 1025"),
    ({"dtype": "float64"}, "dtype: must be one of"),
    ({"remat_policy": "some"}, "remat_policy: must be one of"),
    ({"scan_layers": "no"}, "scan_layers: must be True or False"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings: MiMo-Audio has an untied lm_head"),
    ({"hidden_act": "gelu"}, "hidden_act: only 'silu' is supported"),
])
def test_inconsistent_config_names_the_field(changes, message):
  with pytest.raises(ConfigError, match=message):
    config.tiny(**changes)


def test_bad_config_json_names_the_key(tmp_path):
  raw = config.tiny().to_official_dict()
  with pytest.raises(ConfigError, match="speech_vocab_size: expected integers separated by '-'"):
    MimoAudioConfig.from_official_dict({**raw, "speech_vocab_size": "1025-x"})
  with pytest.raises(ConfigError, match="vocab_size: missing from config.json"):
    MimoAudioConfig.from_official_dict({k: v for k, v in raw.items() if k != "vocab_size"})
  with pytest.raises(ConfigError, match="dtype_typo: not a runtime field"):
    MimoAudioConfig.from_official_dict(raw, dtype_typo="float32")
  with pytest.raises(ConfigError, match="no config.json at"):
    config.load_config(str(tmp_path))
  (tmp_path / "config.json").write_text("{broken")
  with pytest.raises(ConfigError, match="is not valid JSON"):
    config.load_config(str(tmp_path))
  with pytest.raises(ConfigError, match="preset: unknown preset 'huge'"):
    config.preset("huge")
