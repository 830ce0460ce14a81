"""Audio tokenizer (codec) configuration: the official `MiMoAudioTokenizerConfig` keys, validated.

Field names are the keys of the tokenizer's `config.json` (spec §1.2). The official Python class
has defaults that differ from the released checkpoint (d_model 768, ...), so the presets here are
built from the released values and every exported checkpoint carries its config.json.

A few runtime fields of ours (how to compute, not what) follow the official keys; they never
enter config.json (`RUNTIME_FIELDS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mimo_jax.config import DTYPES, ConfigError, read_config_json, write_config_json

_MODEL_TYPE = "mimo_audio_tokenizer"
_ARCHITECTURE = "MiMoAudioTokenizer"
# Windowed self-attention of the transformer stacks: "blocked" computes each block of w =
# max(left, right) steps against its neighbouring blocks only (O(t * w), `codec.layers.
# local_attend`); "masked" computes all [t, t] scores under a mask (the reference). Both give the
# same values; a stack with an unbounded window (the released encoder and decoder) is masked
# either way, since it needs every score it computes.
ATTENTION_IMPLS = ("blocked", "masked")
RUNTIME_FIELDS = frozenset({"attention", "dtype", "remat"})


@dataclasses.dataclass(frozen=True)
class CodecConfig:
  # Signal front end.
  sampling_rate: int = 24000
  hop_length: int = 240
  nfft: int = 960
  window_size: int = 960
  n_mels: int = 128
  fmin: float = 0
  fmax: float | None = None
  max_audio_seconds: int = 1800
  # Encoder.
  d_model: int = 1280
  scale_embedding: bool = False
  kernel_size: int = 3
  stride_size: int = 2
  avg_pooler: int = 2
  activation_function: str = "gelu"
  encoder_layers: int = 32
  encoder_attention_heads: int = 20
  encoder_ffn_dim: int = 5120
  encoder_causal: bool = False
  encoder_attn_window_size: tuple[int, int] = (-1, -1)
  encoder_skip_layer_id: int | None = 3
  # Decoder.
  decoder_layers: int = 32
  decoder_attention_heads: int = 20
  decoder_ffn_dim: int = 5120
  decoder_causal: bool = True
  decoder_attn_window_size: tuple[int, int] = (-1, -1)
  decoder_kernel_size: int = 3
  decoder_stride_size: int = 2
  # Vocoder.
  vocoder_dim: int = 256
  vocoder_intermediate_dim: int = 1024
  vocoder_num_layers: int = 16
  vocoder_attention_heads: int = 16
  vocoder_attn_window_size: tuple[int, int] = (40, 10)
  vocoder_padding: str = "same"
  # RVQ.
  num_quantizers: int = 20
  codebook_size: tuple[int, ...] = (1024, 1024) + (128,) * 18
  threshold_ema_dead_code: int = 2
  # Shared.
  position_embedding_type: str = "rope"
  rope_theta: float = 10000
  rope_type: str = "default"
  ln_type: str = "LayerNorm"
  # Runtime (never in config.json). `dtype` is the compute dtype of the transformer stacks (the
  # bulk of the FLOPs); the mel front end, norms' statistics, softmax, RVQ distances and the
  # ISTFT head stay float32, and parameters are stored float32 and cast per layer. `remat`
  # recomputes each transformer layer in the backward pass instead of storing its activations
  # (training memory; no effect on encode / decode).
  attention: str = "blocked"
  dtype: str = "float32"
  remat: bool = False

  def __post_init__(self):
    for name in ("sampling_rate", "hop_length", "nfft", "window_size", "n_mels",
                 "max_audio_seconds", "d_model", "kernel_size", "stride_size", "avg_pooler",
                 "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "decoder_layers",
                 "decoder_attention_heads", "decoder_ffn_dim", "decoder_kernel_size",
                 "decoder_stride_size", "vocoder_dim", "vocoder_intermediate_dim",
                 "vocoder_num_layers", "vocoder_attention_heads", "num_quantizers"):
      value = getattr(self, name)
      _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, name,
             f"must be a positive integer, got {value!r}")
    for name, heads, dim in (("encoder_attention_heads", self.encoder_attention_heads,
                              self.d_model),
                             ("decoder_attention_heads", self.decoder_attention_heads,
                              self.d_model),
                             ("vocoder_attention_heads", self.vocoder_attention_heads,
                              self.vocoder_dim)):
      _check(dim % heads == 0, name, f"{heads} does not divide the width {dim}")
      _check((dim // heads) % 2 == 0, name, f"head_dim {dim // heads} must be even for RoPE")
    for name, value in (("activation_function", "gelu"), ("ln_type", "LayerNorm"),
                        ("position_embedding_type", "rope"), ("rope_type", "default"),
                        ("vocoder_padding", "same")):
      _check(getattr(self, name) == value, name,
             f"only {value!r} is supported, got {getattr(self, name)!r}")
    _check(not self.scale_embedding, "scale_embedding", "only false is supported")
    # The official stem hard-codes padding=1, which keeps the length rule only for kernel 3.
    _check(self.kernel_size == 3, "kernel_size", f"the official stem pads by 1, so only 3 is "
           f"supported, got {self.kernel_size}")
    _check(self.avg_pooler > 1, "avg_pooler", "1 (no down-sampling layer) is not supported")
    _check(self.decoder_kernel_size >= self.decoder_stride_size, "decoder_kernel_size",
           f"must be >= decoder_stride_size {self.decoder_stride_size}")
    _check(self.window_size == self.nfft, "window_size",
           f"must equal nfft ({self.nfft}): the ISTFT head uses one n_fft-long window")
    _check(self.nfft > self.hop_length and (self.nfft - self.hop_length) % 2 == 0, "nfft",
           f"'same' padding needs nfft - hop_length ({self.nfft} - {self.hop_length}) positive "
           f"and even")
    _check(self.nfft % self.hop_length == 0, "nfft",
           f"must be a multiple of hop_length ({self.hop_length}) for the overlap-add, got "
           f"{self.nfft}")
    _check(self.decoder_stride_size == self.stride_size, "decoder_stride_size",
           f"must equal stride_size ({self.stride_size}) so that decoding restores the frame "
           f"rate, got {self.decoder_stride_size}")
    _check(self.fmax is None or self.fmin < self.fmax <= self.sampling_rate / 2, "fmax",
           f"must be null or in (fmin, sampling_rate/2], got {self.fmax}")
    _check(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
    _check(self.attention in ATTENTION_IMPLS, "attention",
           f"must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
    _check(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
    _check(isinstance(self.remat, bool), "remat", f"must be true or false, got {self.remat!r}")
    for name in ("encoder_attn_window_size", "decoder_attn_window_size",
                 "vocoder_attn_window_size"):
      value = getattr(self, name)
      _check(isinstance(value, tuple) and len(value) == 2 and all(
          isinstance(v, int) and v >= -1 for v in value), name,
             f"must be [left, right] with -1 for unbounded, got {value!r}")
    _check(self.encoder_skip_layer_id is None or
           1 <= self.encoder_skip_layer_id <= self.encoder_layers, "encoder_skip_layer_id",
           f"must be null or in [1, encoder_layers={self.encoder_layers}], got "
           f"{self.encoder_skip_layer_id}")
    _check(isinstance(self.codebook_size, tuple) and
           0 < len(self.codebook_size) <= self.num_quantizers and
           all(isinstance(k, int) and k > 0 for k in self.codebook_size), "codebook_size",
           f"needs 1..num_quantizers ({self.num_quantizers}) positive sizes, got "
           f"{self.codebook_size!r}")

  # --- derived quantities -----------------------------------------------------------------------
  @property
  def codebook_sizes(self) -> tuple[int, ...]:
    """One size per stage; a short list repeats its last entry, as the official RVQ does."""
    sizes = self.codebook_size
    return sizes + (sizes[-1],) * (self.num_quantizers - len(sizes))

  @property
  def samples_per_frame(self) -> int:
    """Waveform samples per 25 Hz code frame (960 for the released tokenizer)."""
    return self.hop_length * self.stride_size * self.avg_pooler

  @property
  def frame_rate(self) -> float:
    return self.sampling_rate / self.samples_per_frame

  def mel_to_code_length(self, mel_frames: int) -> int:
    # Stem: (L - 1) // stride + 1 at 50 Hz, then ceil(L50 / avg_pooler) after zero padding.
    l50 = (mel_frames - 1) // self.stride_size + 1
    return -(-l50 // self.avg_pooler)

  # --- official config.json ---------------------------------------------------------------------
  def to_official_dict(self) -> dict[str, Any]:
    out: dict[str, Any] = {"architectures": [_ARCHITECTURE], "model_type": _MODEL_TYPE}
    for field in dataclasses.fields(self):
      if field.name in RUNTIME_FIELDS:
        continue
      value = getattr(self, field.name)
      out[field.name] = list(value) if isinstance(value, tuple) else value
    return out

  @classmethod
  def from_official_dict(cls, raw: dict[str, Any]) -> CodecConfig:
    """Unknown keys (transformers bookkeeping) are ignored; missing keys take the released value;
    runtime fields are never read from config.json (set them with `replace`)."""
    if raw.get("model_type", _MODEL_TYPE) != _MODEL_TYPE:
      raise ConfigError(f"model_type: expected {_MODEL_TYPE!r}, got {raw['model_type']!r}")
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
      if field.name in raw and field.name not in RUNTIME_FIELDS:
        value = raw[field.name]
        kwargs[field.name] = tuple(value) if isinstance(value, list) else value
    if isinstance(kwargs.get("codebook_size"), int):
      kwargs["codebook_size"] = (kwargs["codebook_size"],)
    return cls(**kwargs)

  def replace(self, **changes: Any) -> CodecConfig:
    return dataclasses.replace(self, **changes)


def _check(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"{field}: {message}")


def load_codec_config(path: str) -> CodecConfig:
  """Reads the tokenizer's official config.json (or the folder holding it)."""
  return CodecConfig.from_official_dict(read_config_json(path))


def save_codec_config(cfg: CodecConfig, path: str) -> None:
  write_config_json(cfg.to_official_dict(), path)


def tiny(**changes: Any) -> CodecConfig:
  """The official tiny fixture's tokenizer (tests/data/official_tiny_a/tokenizer/config.json)."""
  cfg = CodecConfig(
      d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
      encoder_skip_layer_id=1, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=128,
      vocoder_dim=32, vocoder_intermediate_dim=64, vocoder_num_layers=2,
      vocoder_attention_heads=4, num_quantizers=8, codebook_size=(1024, 1024) + (128,) * 6)
  return cfg.replace(**changes)


def full(**changes: Any) -> CodecConfig:
  """The released MiMo-Audio-Tokenizer (spec §1.2)."""
  return CodecConfig().replace(**changes)


PRESETS = {"tiny": tiny, "full": full}


def preset(name: str, **changes: Any) -> CodecConfig:
  if name not in PRESETS:
    raise ConfigError(f"preset: unknown codec preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name](**changes)
