"""A decode whose KV cache has no slot left ends its rows with a reported reason instead of
writing past the cache (dynamic_update_slice would clamp the write onto the last slot)."""

import jax.numpy as jnp
import numpy as np

from mimo_jax.lm import generate as gen
from mimo_jax.lm.layout import FILLER
from tests.lm.test_generate import BUCKETS, EMPTY, _prompt, _tiny


def test_rows_stop_with_cache_full_when_the_cache_is_shorter_than_the_buffers():
  cfg, params = _tiny()
  rng = np.random.RandomState(0)
  requests = [gen.Request(_prompt(cfg, rng, 2, 3), 8), gen.Request(_prompt(cfg, rng, 6, 2), 8)]
  prompt_bkl, len_b, keys_b, settings, n = gen.pack(cfg, requests, **BUCKETS)
  assert n == 8
  # A cache with room for 4 steps under buffers of 8 (a caller that grows the buffers, or a
  # state carried into a longer decode).
  state = gen.prefill(params, cfg, prompt_bkl, len_b, keys_b, empty_id=EMPTY, max_new=4)
  b, g, c = len(len_b), cfg.group_size, cfg.audio_channels
  state = state._replace(
      text_bn=jnp.full((b, n), FILLER, jnp.int32),
      codes_bngc=jnp.broadcast_to(jnp.asarray(cfg.speech_zeroemb_idx, jnp.int32), (b, n, g, c)))
  state = gen.decode(params, cfg, state, settings, jnp.int32(n), empty_id=EMPTY)
  results = gen.unpack(cfg, state, len(requests))
  assert [r.tokens_kl.shape[1] // g for r in results] == [4, 4]
  assert all(r.cache_full and not r.stopped for r in results)
  assert int(state.step) == 4
  assert int(state.cache.index) == state.cache.positions_bs.shape[1]
