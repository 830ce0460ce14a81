"""Norms, RoPE and attention against PyTorch / transformers and brute-force references."""

import jax
import numpy as np
import pytest
import torch
from transformers.models.qwen2 import modeling_qwen2

from mimo_jax.nn.attention import attend, attention_mask
from mimo_jax.nn.norms import layer_norm, rms_norm
from mimo_jax.nn.rope import apply_rope, rope_tables

RNG = np.random.RandomState(0)


def test_rms_norm_matches_transformers():
  x = RNG.randn(2, 5, 16).astype(np.float32)
  scale = (1 + 0.2 * RNG.randn(16)).astype(np.float32)
  ref = modeling_qwen2.Qwen2RMSNorm(16, eps=1e-6)
  ref.weight.data = torch.tensor(scale)
  with torch.no_grad():
    expected = ref(torch.tensor(x)).numpy()
  np.testing.assert_allclose(np.asarray(rms_norm(x, scale, 1e-6)), expected, atol=1e-5, rtol=0)


def test_layer_norm_matches_torch():
  x = (3 + RNG.randn(2, 5, 16)).astype(np.float32)
  scale, bias = RNG.randn(16).astype(np.float32), RNG.randn(16).astype(np.float32)
  expected = torch.nn.functional.layer_norm(torch.tensor(x), (16,), torch.tensor(scale),
                                            torch.tensor(bias), eps=1e-5).numpy()
  np.testing.assert_allclose(np.asarray(layer_norm(x, scale, bias)), expected, atol=1e-5, rtol=0)


def test_rope_matches_transformers():
  head_dim, theta = 16, 640000.0
  positions = np.array([[0, 1, 2, 7, 100, 8191]])
  q = RNG.randn(1, 6, 3, head_dim).astype(np.float32)  # [b, t, n, h]
  hf_cfg = modeling_qwen2.Qwen2Config(head_dim=head_dim, hidden_size=48, num_attention_heads=3,
                                      rope_theta=theta)
  rotary = modeling_qwen2.Qwen2RotaryEmbedding(hf_cfg)
  q_t = torch.tensor(q).transpose(1, 2)  # HF rotates [b, n, t, h]
  cos, sin = rotary(q_t, torch.tensor(positions))
  expected, _ = modeling_qwen2.apply_rotary_pos_emb(q_t, q_t, cos, sin)
  cos_ours, sin_ours = rope_tables(positions, head_dim, theta)
  np.testing.assert_allclose(np.asarray(cos_ours), cos.numpy(), atol=1e-5, rtol=0)
  ours = apply_rope(q, cos_ours, sin_ours)
  np.testing.assert_allclose(np.asarray(ours), expected.transpose(1, 2).numpy(), atol=1e-5,
                             rtol=0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, (2, 1), (3, -1), (-1, 0)])
def test_mask_follows_positions_segments_and_windows(causal, window):
  q_pos, kv_pos = np.array([[0, 1, 2, 3, 0, 1, 2]]), np.array([[0, 1, 2, 3, 0, 1, 2]])
  seg = np.array([[1, 1, 1, 1, 2, 2, 0]])
  mask = np.asarray(attention_mask(q_pos, kv_pos, seg, seg, causal=causal, window=window))
  for t in range(7):
    for s in range(7):
      offset = kv_pos[0, s] - q_pos[0, t]
      allowed = seg[0, t] == seg[0, s] and not (causal and offset > 0)
      if window is not None:
        allowed &= window[0] < 0 or offset >= -window[0]
        allowed &= window[1] < 0 or offset <= window[1]
      assert mask[0, t, s] == allowed, (t, s)


def test_grouped_attention_matches_a_naive_reference():
  b, t, s, n, k, h = 2, 5, 7, 6, 2, 8
  q, key, v = (RNG.randn(b, length, heads, h).astype(np.float32)
               for length, heads in ((t, n), (s, k), (s, k)))
  mask = RNG.rand(b, t, s) > 0.3
  mask[..., 0] = True  # every query sees at least one key
  out = np.asarray(attend(q, key, v, mask))
  for bi in range(b):
    for ni in range(n):
      ki = ni // (n // k)  # query heads are grouped contiguously per kv head (HF repeat_kv)
      scores = q[bi, :, ni] @ key[bi, :, ki].T / np.sqrt(h)
      scores = np.where(mask[bi], scores, -np.inf)
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      np.testing.assert_allclose(out[bi, :, ni], probs @ v[bi, :, ki], atol=1e-5, rtol=0)


def test_attention_dropout_is_unbiased_and_only_on_with_a_key():
  b, t, s, n, k, h = 2, 5, 7, 6, 2, 8
  q, key, v = (RNG.randn(b, length, heads, h).astype(np.float32)
               for length, heads in ((t, n), (s, k), (s, k)))
  mask = RNG.rand(b, t, s) > 0.3
  mask[..., 0] = True
  plain = np.asarray(attend(q, key, v, mask))
  dropped = lambda rate, seed: np.asarray(attend(q, key, v, mask, dropout_rate=rate,
                                                 dropout_key=jax.random.key(seed)))
  np.testing.assert_array_equal(dropped(0.0, 0), plain)  # rate 0: the plain computation
  np.testing.assert_array_equal(dropped(0.5, 0), dropped(0.5, 0))
  assert np.abs(dropped(0.5, 0) - dropped(0.5, 1)).max() > 0.1
  # Kept probabilities are scaled by 1 / (1 - rate): the mean over keys is the plain output.
  # The standard error of a 4000-key mean is about 0.03 per element at most for such draws
  # (measured): 0.15 is ~5 of them, while a missing 1 / (1 - rate) would be off by half of
  # |plain| (up to ~0.8).
  many = jax.vmap(lambda key_: attend(q, key, v, mask, dropout_rate=0.5, dropout_key=key_))(
      jax.random.split(jax.random.key(2), 4000))
  np.testing.assert_allclose(np.asarray(many).mean(axis=0), plain, atol=0.15, rtol=0)
