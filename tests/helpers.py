"""Shared test helpers: random parameters that exercise every weight, HF reference models, and a
random model steered to speak."""

import jax
import numpy as np
import torch
import transformers

from mimo_jax.config import StackConfig
from mimo_jax.data import templates
from mimo_jax.lm import model
from mimo_jax.nn.params import init_params


def random_params(specs, seed: int = 0):
  """Params with non-trivial biases and norm gains (the default init has zeros and ones)."""
  params = init_params(specs, jax.random.key(seed))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  noisy = [leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, noisy)


def hf_stack(cfg: StackConfig, official_tensors: dict) -> transformers.Qwen2Model:
  """An HF Qwen2Model with the shape of `cfg`, loaded with our exported stack tensors."""
  hf_cfg = transformers.Qwen2Config(
      hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.d_ff,
      rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps, vocab_size=8)
  hf_cfg._attn_implementation = "eager"
  model = transformers.Qwen2Model(hf_cfg).eval()
  state = {name: torch.tensor(np.asarray(a)) for name, a in official_tensors.items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert missing == ["embed_tokens.weight"] and not unexpected, (missing, unexpected)
  return model


def hf_stack_forward(model: transformers.Qwen2Model, x_btd: np.ndarray, causal: bool) -> np.ndarray:
  x = torch.from_numpy(np.asarray(x_btd, np.float32))
  kwargs = {}
  if not causal:  # an all-zero additive mask: every query sees every key
    b, t, _ = x.shape
    kwargs["attention_mask"] = {"full_attention": torch.zeros(b, 1, t, t)}
  with torch.no_grad():
    return model(inputs_embeds=x, **kwargs).last_hidden_state.numpy()


def speaking_params(mimo, empty_id: int) -> dict:
  """`mimo`'s params with `<|empty|>` made the text argmax at every step, so that random weights
  answer with audio: its lm_head column points along the mean direction of the final hidden
  states of a TTS prompt, which a random model's hidden states all lean toward."""
  params = mimo.params
  prompt_kl = templates.tts_sft(mimo.fmt, "hello").ids_kl
  h_pd = np.asarray(model.forward(params, mimo.cfg, prompt_kl[None], empty_id))[0]
  kernel = np.array(params["lm_head"]["kernel"])
  kernel[:, empty_id] = 1e3 * np.mean(h_pd / np.linalg.norm(h_pd, axis=1, keepdims=True), axis=0)
  return {**params, "lm_head": {"kernel": kernel}}
