"""The backbone against transformers Qwen2ForCausalLM, the official fixtures, and KV-cache decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from mimo_jax import config
from mimo_jax.convert.hf import export_checkpoint, import_checkpoint
from mimo_jax.lm import backbone
from tests.helpers import random_params

CFG = config.tiny()


def _tokens(batch, length, seed=0):
  return np.random.RandomState(seed).randint(0, CFG.vocab_size, (batch, length))


def test_logits_match_transformers(tmp_path):
  params = random_params(backbone.param_specs(CFG))
  export_checkpoint(params, CFG, str(tmp_path))
  hf = transformers.Qwen2ForCausalLM.from_pretrained(
      str(tmp_path), dtype=torch.float32, attn_implementation="eager").eval()
  tokens = _tokens(3, 17)
  with torch.no_grad():
    ref = hf(torch.tensor(tokens)).logits.numpy()
  ours, _ = jax.jit(lambda p, t: backbone.forward(p, CFG, tokens_bt=t))(params, tokens)
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


def test_official_fixture_hidden_states_and_logits(official_tiny_lm_dir):
  """The official MiMo-Audio checkpoint's backbone reproduces the official code's outputs."""
  params, cfg = import_checkpoint(official_tiny_lm_dir, config.load_config(
      official_tiny_lm_dir, dtype="float32"))
  io = np.load(f"{official_tiny_lm_dir}/io.npz")
  positions = io["position_ids"][None]
  for suffix in ("", "_fp32acc"):
    embeds = io["inputs_embeds" + suffix][None]
    h, _ = backbone.hidden_states(params, cfg, embeds_btd=embeds, positions_bt=positions)
    # Measured max |difference| 3.8e-6 (experiments/results/official_parity.md).
    np.testing.assert_allclose(np.asarray(h[0]), io["hidden" + suffix], atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(backbone.text_logits(params, h)[0]),
                               io["text_logits" + suffix], atol=2e-5, rtol=0)


def test_prefill_then_single_steps_match_full_forward():
  params = random_params(backbone.param_specs(CFG))
  tokens = _tokens(2, 12, seed=3)
  full, _ = backbone.forward(params, CFG, tokens_bt=tokens)
  step = jax.jit(lambda p, t, pos, c: backbone.forward(p, CFG, tokens_bt=t, positions_bt=pos,
                                                        cache=c))
  cache = backbone.init_cache(CFG, batch=2, max_len=16)
  prefill = 5
  positions = np.broadcast_to(np.arange(12), (2, 12))
  logits, cache = step(params, tokens[:, :prefill], positions[:, :prefill], cache)
  pieces = [logits]
  for i in range(prefill, 12):
    logits, cache = step(params, tokens[:, i:i + 1], positions[:, i:i + 1], cache)
    pieces.append(logits)
  assert int(cache.index) == 12
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), np.asarray(full), atol=1e-4, rtol=0)


def test_cached_rows_with_left_padding_match_unpadded_runs():
  """Rows of different prompt lengths share one cache: padding (segment 0) is never attended."""
  params = random_params(backbone.param_specs(CFG))
  short, long_ = _tokens(1, 4, seed=5), _tokens(1, 7, seed=6)
  tokens = np.concatenate([np.pad(short, ((0, 0), (3, 0))), long_])
  segments = np.array([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
  positions = np.array([[0, 0, 0, 0, 1, 2, 3], list(range(7))])
  cache = backbone.init_cache(CFG, batch=2, max_len=8)
  logits, cache = backbone.forward(params, CFG, tokens_bt=tokens, positions_bt=positions,
                                   segment_ids_bt=segments, cache=cache)
  next_tokens = _tokens(2, 1, seed=7)
  next_logits, _ = backbone.forward(params, CFG, tokens_bt=next_tokens,
                                    positions_bt=np.array([[4], [7]]),
                                    segment_ids_bt=np.ones((2, 1), int), cache=cache)
  for row, prompt in ((0, short), (1, long_)):
    alone, _ = backbone.forward(params, CFG, tokens_bt=np.concatenate(
        [prompt, next_tokens[row:row + 1]], axis=1))
    np.testing.assert_allclose(np.asarray(next_logits[row, 0]), np.asarray(alone[0, -1]),
                               atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(logits[0, 3:]), np.asarray(
      backbone.forward(params, CFG, tokens_bt=short)[0][0]), atol=1e-4, rtol=0)


def test_bf16_compute_keeps_fp32_params_and_logits():
  params = random_params(backbone.param_specs(CFG))
  bf16 = CFG.replace(dtype="bfloat16")
  logits, _ = backbone.forward(params, bf16, tokens_bt=_tokens(2, 8))
  assert logits.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  h, _ = backbone.hidden_states(params, bf16, tokens_bt=_tokens(2, 8))
  assert h.dtype == jnp.bfloat16
