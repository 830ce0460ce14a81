"""The sampler's draw on the top candidates is the whole-vocabulary `jax.random.categorical` draw,
bit for bit: the same Gumbel noise at the same ids, the same winner (sampling.gumbel_at,
sampling._draw_candidates). A JAX upgrade that changes its random bits fails here first."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimo_jax.lm import sampling
from mimo_jax.lm.sampling import SamplerConfig, SamplerParams


@pytest.mark.parametrize("v", [5, 129, 1025, 151680])
def test_gumbel_at_is_jax_gumbel_at_those_ids(v):
  key = jax.random.key(v)
  ids_n = np.random.default_rng(v).choice(v, min(v, 300), replace=False).astype(np.int32)
  full_v = np.asarray(jax.random.gumbel(key, (v,)))
  np.testing.assert_array_equal(np.asarray(jax.jit(sampling.gumbel_at)(key, ids_n)),
                                full_v[ids_n])


@pytest.mark.parametrize("vocab, scale", [(1025, 8.0), (129, 3.0), (600, 0.3), (5000, 6.0)],
                         ids=["audio_head", "small_head", "flat", "wide"])
def test_candidate_draw_equals_the_vocabulary_draw(vocab, scale):
  """Over 2000 rows of four presets with 2% of the ids banned; a flat distribution leaves some
  rows' nuclei outside the candidates, which the sampler draws over the whole vocabulary."""
  n = 2000
  rng = np.random.default_rng(vocab)
  presets = [SamplerConfig(temperature=0.9, top_p=0.95),
             SamplerConfig(temperature=0.6, top_k=50, top_p=0.95),
             SamplerConfig(temperature=1.3, top_k=20), SamplerConfig(top_p=0.5)]
  sp = SamplerParams.of([presets[i % len(presets)] for i in range(n)])
  logits_bv = jnp.asarray(rng.standard_normal((n, vocab)).astype(np.float32) * scale)
  banned_bv = jnp.asarray(rng.random((n, vocab)) < 0.02)
  keys_b = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(11), i))(jnp.arange(n))
  nuc = jax.jit(sampling.nucleus)(logits_bv, sp)
  inside_b = np.asarray(nuc.inside_b)
  assert inside_b.mean() > 0.5
  ours_b = np.asarray(jax.jit(sampling._draw_candidates)(keys_b, nuc, banned_bv))
  full_b = np.asarray(jax.jit(sampling._draw_vocab)(keys_b, nuc, banned_bv))
  np.testing.assert_array_equal(ours_b[inside_b], full_b[inside_b])
  np.testing.assert_array_equal(np.asarray(jax.jit(sampling.sample)(keys_b, logits_bv, sp,
                                                                    banned_bv)), full_b)


def test_a_row_whose_kept_ids_are_all_banned_draws_id_0_as_argmax_does():
  logits_bv = jnp.asarray([[0.0, 50.0, 1.0, 2.0]])
  sp = SamplerParams.of([SamplerConfig(top_k=1)])
  banned_bv = jnp.asarray([[False, True, False, False]])
  keys_b = jax.random.split(jax.random.key(0), 1)
  nuc = sampling.nucleus(logits_bv, sp)
  assert int(sampling._draw_candidates(keys_b, nuc, banned_bv)[0]) == 0
  assert int(sampling._draw_vocab(keys_b, nuc, banned_bv)[0]) == 0
