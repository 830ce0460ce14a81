"""Meshes from flags, logical rules, and sharded forwards equal to the single-device forward."""

import importlib.util
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mimo_jax import config, sharding
from mimo_jax.plan import topology
from mimo_jax.train import config as train_config
from mimo_jax.train.state import TrainSetup
from mimo_jax.train.step import make_train_step
from mimo_jax.lm import backbone
from mimo_jax.nn.params import init_params, logical_axes
from tests.helpers import random_params

CFG = config.tiny()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_mesh_fills_the_minus_one_axis():
  assert sharding.parse_mesh("data:1,fsdp:-1,tensor:1", 8) == {"dcn": 1, "data": 1, "fsdp": 8,
                                                               "tensor": 1}
  assert sharding.parse_mesh("data:2, tensor:2, fsdp:-1", 8) == {"dcn": 1, "data": 2, "fsdp": 2,
                                                                 "tensor": 2}
  assert sharding.parse_mesh("fsdp:1", 1) == {"dcn": 1, "data": 1, "fsdp": 1, "tensor": 1}


def test_parse_mesh_over_slices_tiles_each_slice():
  # dcn defaults to the number of slices, so single-slice flags run unchanged on several slices.
  expected = {"dcn": 2, "data": 1, "fsdp": 16, "tensor": 2}
  assert sharding.parse_mesh("data:1,fsdp:-1,tensor:2", 64, n_slices=2) == expected
  assert sharding.parse_mesh("dcn:2,data:1,fsdp:-1,tensor:2", 64, n_slices=2) == expected
  with pytest.raises(sharding.MeshError, match="dcn:2 but the devices form 1 slice"):
    sharding.parse_mesh("dcn:2,fsdp:-1", 8)
  with pytest.raises(sharding.MeshError, match="multiply to 64 but there are 32 devices per slice"):
    sharding.parse_mesh("dcn:2,fsdp:64", 64, n_slices=2)


@pytest.mark.parametrize("flag, message", [
    ("data:2,fsdp:3", "axes multiply to 6 but there are 8 devices"),
    ("data:3,fsdp:-1", "8 devices do not divide by 3"),
    ("data:-1,fsdp:-1", "only one axis may be -1"),
    ("model:8", "expected comma-separated axis:size"),
    ("dcn:-1,fsdp:8", "dcn:-1 but the devices form 1 slice"),
    ("fsdp", "expected comma-separated axis:size"),
    ("fsdp:x", "size of 'fsdp' is not an integer"),
    ("fsdp:4,fsdp:2", "axis 'fsdp' given twice"),
    ("fsdp:0,data:-1", "must be positive or -1"),
])
def test_bad_mesh_flag_is_quoted(flag, message):
  with pytest.raises(sharding.MeshError, match=message):
    sharding.parse_mesh(flag, 8)


def test_logical_rules():
  assert sharding.logical_to_spec(("batch", "length", "activation_embed")) == P(
      ("data", "fsdp"), None, None)
  assert sharding.logical_to_spec(("layers", "embed", "heads")) == P(None, "fsdp", "tensor")
  assert sharding.logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")


MESHES = ["data:8,fsdp:1,tensor:1", "data:1,fsdp:8,tensor:1", "data:2,fsdp:2,tensor:2",
          "data:1,fsdp:4,tensor:2"]


@pytest.mark.parametrize("flag", MESHES)
def test_sharded_forward_equals_single_device(flag):
  assert jax.device_count() == 8
  specs = backbone.param_specs(CFG)
  params = random_params(specs)
  tokens = np.random.RandomState(0).randint(0, CFG.vocab_size, (8, 12))
  expected, _ = backbone.forward(params, CFG, tokens_bt=tokens)

  mesh = sharding.make_mesh(flag)
  sharded = sharding.shard_params(params, logical_axes(specs), mesh)
  q_kernel = sharded["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q_kernel.sharding.spec == P(None, "fsdp", "tensor")
  assert len(q_kernel.addressable_shards) == 8
  batch_sharding = jax.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
  tokens = jax.device_put(tokens, batch_sharding)
  with jax.set_mesh(mesh):
    logits, _ = jax.jit(lambda p, t: backbone.forward(p, CFG, tokens_bt=t))(sharded, tokens)
  expected_sharding = jax.NamedSharding(mesh, sharding.logical_to_spec(
      ("batch", "length", "activation_vocab")))
  assert logits.sharding.is_equivalent_to(expected_sharding, logits.ndim)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5, rtol=0)


def test_init_sharded_equals_host_init():
  specs = backbone.param_specs(CFG)
  mesh = sharding.make_mesh("data:2,fsdp:2,tensor:2")
  sharded = sharding.init_sharded(specs, jax.random.key(3), mesh)
  host = init_params(specs, jax.random.key(3))
  # Same random bits; the normal transform may round differently once partitioned.
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(host)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=0)
  embedding = sharded["model"]["embed_tokens"]["embedding"]
  assert embedding.sharding.spec == P("tensor", "fsdp")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install 'jax[tpu]')")
def test_trainer_mesh_over_two_slices_compiles_the_train_step():
  """The training job's own mesh and step on the planner's abstract 2 x v5e-4 (no TPU needed):
  `data` crosses the slices, each slice is tiled by fsdp x tensor, and the step compiles."""
  devices = topology.abstract_devices(topology.parse_topology("v5e:2x2", num_slices=2))
  mesh = sharding.make_mesh("dcn:2,data:1,fsdp:-1,tensor:2", devices)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert [{d.slice_index for d in mesh.devices[i].flat} for i in range(2)] == [{0}, {1}]

  cfg = train_config.load_file(os.path.join(ROOT, "experiments", "configs", "tiny.py"))
  cfg.train.phase = "understanding"  # the cheaper phase to compile (a minute on 2 busy cores)
  t = cfg.train
  step = make_train_step(TrainSetup.from_config(cfg), mesh, t.batch_size, t.positions,
                         cfg.data.empty_id)
  compiled = step.fn.lower(step.abstract_state, step.abstract_batch).compile()
  batch_sharding = compiled.input_shardings[0][1]["input_ids"]
  assert batch_sharding.spec[0] == ("data", "fsdp")  # rows split over both slices
  assert compiled.memory_analysis().argument_size_in_bytes > 0
