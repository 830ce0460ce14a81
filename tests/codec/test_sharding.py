"""The codec on a mesh of 8 fake CPU devices equals the single-device run (logical-axis rules)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mimo_jax import sharding
from mimo_jax.codec import checkpoint, decoder, encoder, rvq
from mimo_jax.nn.params import logical_axes
from tests.codec.common import official_codec, official_io


@pytest.mark.parametrize("flag", ["data:2,fsdp:2,tensor:2"])
def test_sharded_encode_decode_equals_single_device(flag):
  params, cfg = official_codec()
  mel_btm = jnp.asarray(np.stack([official_io()["mel"].T[:200]] * 4))
  lengths_b = jnp.array([200, 150, 101, 64])

  def run(params, mel_btm, lengths_b):
    features_btd, lengths25_b = encoder.encode_features(params["encoder"], cfg, mel_btm, lengths_b)
    codes_btq, zq_btd = rvq.quantize(params["quantizer"], cfg, features_btd, 8)
    return codes_btq, decoder.decode_wav(params["decoder"], cfg, zq_btd, lengths25_b)[0]

  expected_codes, expected_wav = jax.jit(run)(params, mel_btm, lengths_b)
  mesh = sharding.make_mesh(flag)
  sharded = sharding.shard_params(params, logical_axes(checkpoint.codec_specs(cfg)), mesh)
  q_kernel = sharded["encoder"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q_kernel.sharding.spec == P(None, "fsdp", "tensor")
  batch = jax.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length", None)))
  with jax.set_mesh(mesh):
    codes, wav = jax.jit(run)(sharded, jax.device_put(mel_btm, batch), lengths_b)
  np.testing.assert_array_equal(np.asarray(codes), np.asarray(expected_codes))
  np.testing.assert_allclose(np.asarray(wav), np.asarray(expected_wav), rtol=0, atol=1e-5)
