"""The Qwen2 backbone: token or input embeddings -> causal stack -> hidden states -> text logits.

Params mirror HF `Qwen2ForCausalLM`: {"model": {"embed_tokens", "layers", "norm"}, "lm_head"}.
Compute runs in `cfg.dtype` (bf16 by default) over parameters stored in `cfg.param_dtype`; logits
come out in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mimo_jax import sharding
from mimo_jax.config import MimoAudioConfig
from mimo_jax.nn.attention import KVCache
from mimo_jax.nn.params import ParamSpec
from mimo_jax.nn.stack import init_cache as init_stack_cache
from mimo_jax.nn.stack import stack_forward, stack_param_specs


def param_specs(cfg: MimoAudioConfig) -> dict:
  d, v = cfg.hidden_size, cfg.vocab_size
  return {
      "model": {"embed_tokens": {"embedding": ParamSpec((v, d), ("vocab", "embed"))},
                **stack_param_specs(cfg.backbone)},
      "lm_head": {"kernel": ParamSpec((d, v), ("embed", "vocab"))},
  }


def init_cache(cfg: MimoAudioConfig, batch: int, max_len: int) -> KVCache:
  return init_stack_cache(cfg.backbone, batch, max_len)


def embed_tokens(params: dict, tokens_bt: jax.Array, cfg: MimoAudioConfig) -> jax.Array:
  table_vd = params["model"]["embed_tokens"]["embedding"]
  return jnp.take(table_vd, tokens_bt, axis=0).astype(cfg.dtype)


def hidden_states(params: dict, cfg: MimoAudioConfig, *, tokens_bt: jax.Array | None = None,
                  embeds_btd: jax.Array | None = None, positions_bt: jax.Array | None = None,
                  segment_ids_bt: jax.Array | None = None,
                  cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
  """Final-normed hidden states [b, t, d] from exactly one of tokens or input embeddings."""
  if (tokens_bt is None) == (embeds_btd is None):
    raise ValueError("hidden_states: pass exactly one of tokens_bt and embeds_btd")
  x_btd = embed_tokens(params, tokens_bt, cfg) if embeds_btd is None else embeds_btd
  return stack_forward(params["model"], x_btd, cfg.backbone, positions_bt=positions_bt,
                       segment_ids_bt=segment_ids_bt, cache=cache)


def text_logits(params: dict, h_btd: jax.Array) -> jax.Array:
  kernel_dv = params["lm_head"]["kernel"].astype(h_btd.dtype)
  logits_btv = jnp.einsum("btd,dv->btv", h_btd, kernel_dv, preferred_element_type=jnp.float32)
  return sharding.constrain(logits_btv, ("batch", "length", "activation_vocab"))


def forward(params: dict, cfg: MimoAudioConfig, **inputs) -> tuple[jax.Array, KVCache | None]:
  """Text logits [b, t, vocab] (float32) and the updated cache; inputs as for hidden_states."""
  h_btd, cache = hidden_states(params, cfg, **inputs)
  return text_logits(params, h_btd), cache
