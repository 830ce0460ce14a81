"""Codec config: presets, the official config.json, and errors that name the field."""

import json

import pytest

from mimo_jax.codec import config as codec_config
from mimo_jax.codec.config import CodecConfig
from mimo_jax.config import ConfigError
from tests.codec.common import TOKENIZER_DIR


def test_official_fixture_config_reads_as_the_tiny_preset():
  assert codec_config.load_codec_config(TOKENIZER_DIR) == codec_config.tiny()


def test_full_preset_has_the_released_numbers():
  cfg = codec_config.preset("full")
  assert (cfg.d_model, cfg.encoder_layers, cfg.encoder_attention_heads, cfg.encoder_ffn_dim,
          cfg.encoder_skip_layer_id, cfg.decoder_layers, cfg.decoder_causal) == (
              1280, 32, 20, 5120, 3, 32, True)
  assert (cfg.vocoder_dim, cfg.vocoder_intermediate_dim, cfg.vocoder_num_layers,
          cfg.vocoder_attention_heads, cfg.vocoder_attn_window_size) == (
              256, 1024, 16, 16, (40, 10))
  assert cfg.codebook_sizes == (1024, 1024) + (128,) * 18
  assert (cfg.sampling_rate, cfg.nfft, cfg.hop_length, cfg.n_mels) == (24000, 960, 240, 128)
  assert cfg.samples_per_frame == 960 and cfg.frame_rate == 25


def test_config_json_round_trip_with_official_keys(tmp_path):
  cfg = codec_config.full()
  codec_config.save_codec_config(cfg, str(tmp_path))
  raw = json.loads((tmp_path / "config.json").read_text())
  assert raw["model_type"] == "mimo_audio_tokenizer"
  assert raw["codebook_size"] == [1024, 1024] + [128] * 18
  assert raw["vocoder_attn_window_size"] == [40, 10] and raw["fmax"] is None
  official = json.loads(open(f"{TOKENIZER_DIR}/config.json").read())
  assert set(official) - {"_attn_implementation_autoset", "transformers_version"} <= set(raw)
  assert codec_config.load_codec_config(str(tmp_path)) == cfg


def test_runtime_fields_never_enter_config_json(tmp_path):
  cfg = codec_config.tiny(attention="masked", dtype="bfloat16", remat=True)
  assert not codec_config.RUNTIME_FIELDS & set(cfg.to_official_dict())
  codec_config.save_codec_config(cfg, str(tmp_path))
  assert codec_config.load_codec_config(str(tmp_path)) == codec_config.tiny()


def test_a_short_codebook_list_repeats_its_last_size():
  cfg = codec_config.tiny(num_quantizers=12, codebook_size=(1024, 1024, 128))
  assert cfg.codebook_sizes == (1024, 1024) + (128,) * 10


@pytest.mark.parametrize("changes, field", [
    ({"d_model": 0}, "d_model"),
    ({"encoder_attention_heads": 3}, "encoder_attention_heads"),
    ({"vocoder_attention_heads": 32}, "vocoder_attention_heads"),
    ({"codebook_size": (1024,) * 9}, "codebook_size"),
    ({"kernel_size": 5}, "kernel_size"),
    ({"ln_type": "RMSNorm"}, "ln_type"),
    ({"vocoder_attn_window_size": (40,)}, "vocoder_attn_window_size"),
    ({"encoder_skip_layer_id": 3}, "encoder_skip_layer_id"),
    ({"nfft": 1000, "window_size": 1000}, "nfft"),
    ({"decoder_stride_size": 3}, "decoder_stride_size"),
    ({"attention": "flash"}, "attention"),
    ({"dtype": "int8"}, "dtype"),
    ({"remat": "full"}, "remat"),
])
def test_bad_values_name_the_field(changes, field):
  with pytest.raises(ConfigError, match=f"^{field}:"):
    codec_config.tiny(**changes)


def test_wrong_model_type_and_bad_json_are_named(tmp_path):
  with pytest.raises(ConfigError, match="^model_type:"):
    CodecConfig.from_official_dict({"model_type": "qwen2"})
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ConfigError, match="not valid JSON"):
    codec_config.load_codec_config(str(tmp_path))
  with pytest.raises(ConfigError, match="no config.json"):
    codec_config.load_codec_config(str(tmp_path / "absent"))
