"""The TPU planner: topology names, jaxpr FLOP counting, and real compiles for abstract TPUs.

The compiles need libtpu (the test extra installs it); no TPU is used. One real train step (the
training job's, tiny config, with micro-batches, remat and chunked cross-entropy) is compiled
once for a v5e 2x2 slice and shared by the report tests.
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding

from mimo_jax import config, sharding
from mimo_jax.lm import backbone
from mimo_jax.nn.params import abstract_params, logical_axes
from mimo_jax.lm import flops as lm_flops
from mimo_jax.plan import flops, report, topology

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load_config_file(path: str):
  spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is not installed (pip install 'jax[tpu]')")


@pytest.mark.parametrize("name, grid, chips", [
    ("v5p-64", "v5p:2x4x4", 32), ("v5e-256", "v5e:16x16", 256), ("v4-128", "v4:4x4x4", 64),
    ("v6e-256", "v6e:16x16", 256), ("v4-8", "v4:2x2x1", 4), ("v5e-32", "v5e:4x8", 32),
    ("v5p:4x4x8", "v5p:4x4x8", 128)])
def test_product_names_map_to_grids(name, grid, chips):
  topo = topology.parse_topology(name)
  assert (topo.topology_name, topo.num_chips) == (grid, chips)
  assert topology.parse_topology(name, num_slices=2).num_chips == 2 * chips


@pytest.mark.parametrize("name, slices, message", [
    ("v5p-63", 1, "not a multiple"), ("v5e-48", 1, "not a power of two"),
    ("v9-8", 1, "expected a product name"), ("v5p:2x4", 1, "grids have 3 axes"),
    ("v5p-64", 0, "--num_slices")])
def test_bad_topologies_are_named(name, slices, message):
  with pytest.raises(topology.PlanError, match=message):
    topology.parse_topology(name, slices)


def test_missing_libtpu_says_how_to_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(topology.PlanError, match=rf"pip install 'jax\[tpu\]=={jax.__version__}'"):
    topology.abstract_devices(topology.parse_topology("v5e-4"))


@needs_libtpu
@pytest.mark.parametrize("name, devices", [("v5p-8", 4), ("v5e-4", 4), ("v4-8", 4),
                                           ("v6e-4", 4), ("v4-128", 64)])
def test_abstract_devices_are_the_chips(name, devices):
  topo = topology.parse_topology(name)
  found = topology.abstract_devices(topo)
  # One device per chip (v4 and v5p: megacore), of the kind the peak-FLOP table is keyed by.
  assert len(found) == devices == topo.num_chips
  assert {d.device_kind for d in found} == {topo.chip.device_kind}


@needs_libtpu
def test_mesh_that_splits_a_torus_axis_is_named():
  topo = topology.parse_topology("v4-128")  # 4x4x4: fsdp 16 = 4x4 and tensor 4 fit, tensor 2 not
  assert dict(topology.topology_mesh(topo, "data:1,fsdp:16,tensor:4").shape)["tensor"] == 4
  with pytest.raises(topology.PlanError, match=r"--mesh=data:1,fsdp:32,tensor:2: cannot be laid "
                     r"out on the v4:4x4x4 torus"):
    topology.topology_mesh(topo, "data:1,fsdp:32,tensor:2")


@needs_libtpu
@pytest.mark.parametrize("name, mesh_flag, fsdp, tensor", [
    ("v5e-4", "data:1,fsdp:2,tensor:2", 2, 2),
    # fsdp:8 splits an axis of the 4x4 torus, as the 7B v5e-256 mesh (fsdp:32 on 16x16) does.
    ("v5e-16", "dcn:2,data:1,fsdp:8,tensor:2", 8, 2)])
def test_multislice_mesh_puts_data_across_slices(name, mesh_flag, fsdp, tensor):
  topo = topology.parse_topology(name, num_slices=2)
  mesh = topology.topology_mesh(topo, mesh_flag)
  assert dict(mesh.shape) == {"data": 2, "fsdp": fsdp, "tensor": tensor}
  slices = [{d.slice_index for d in mesh.devices[i].flat} for i in range(2)]
  assert slices == [{0}, {1}]


def test_scan_cond_and_while_counting():
  a = jax.ShapeDtypeStruct((4, 8), jnp.float32)
  w = jax.ShapeDtypeStruct((8, 8), jnp.float32)

  def f(a, w):
    x, _ = jax.lax.scan(lambda x, _: (x @ w, None), a, None, length=7)  # 7 x 2*4*8*8
    x = jax.lax.cond(x.sum() > 0, lambda x: x @ w @ w, lambda x: x, x)  # the dearer: 2 matmuls
    return jax.lax.while_loop(lambda x: x.sum() < 1, lambda x: x @ w, x)  # counted once

  count = flops.count_flops(f, a, w)
  assert count.flops == (7 + 2 + 1) * 2 * 4 * 8 * 8
  assert count.unbounded_loops == 1


@pytest.mark.parametrize("remat", ["none", "full"])
def test_backbone_jaxpr_flops_match_6n_tokens(remat):
  cfg = config.tiny(num_hidden_layers=3, remat_policy=remat)
  params = abstract_params(backbone.param_specs(cfg))
  tokens = jax.ShapeDtypeStruct((2, 32), jnp.int32)

  def loss(p, t):
    logits, _ = backbone.forward(p, cfg, tokens_bt=t)
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1))

  counted = flops.count_flops(jax.grad(loss), params, tokens).flops
  analytic = lm_flops.backbone_train_flops(cfg, 2, 32)
  if remat == "none":
    assert abs(counted / analytic - 1) < 0.05
  else:
    # Full remat runs each layer's forward again in the backward pass (2 of the stack's 6 units
    # of work), except the MLP's down projection, whose output the backward never reads.
    tokens_n = 2 * 32
    stack = analytic - 6.0 * cfg.hidden_size * cfg.vocab_size * tokens_n
    down_proj = 2.0 * cfg.hidden_size * cfg.intermediate_size * tokens_n * cfg.num_hidden_layers
    assert counted == analytic + stack / 3 - down_proj


@pytest.mark.parametrize("causal, mesh_flag", [(True, None), (False, None),
                                               (True, "data:2,fsdp:2,tensor:2")])
def test_splash_kernels_count_the_blocks_they_run(causal, mesh_flag):
  """Splash attention is Pallas kernels the jaxpr count sees as one grid step each; counted per
  grid step that runs: 2 x 2 blocks of 512 at t = 1024, of which the causal mask runs 3. The
  forward does q.k and p.v; the backward's dq kernel q.k, do.v and ds.k, its dkv kernel q.k,
  do.v, p^T.do and ds^T.q (scores recomputed, as flash attention does); plus the o.do row sums
  of the backward (a dot_general outside the kernels). Under a mesh each shard's kernels count
  once per shard."""
  from mimo_jax.nn import attention
  b, t, n, k, h, block = 4, 1024, 4, 2, 64, 512
  q = jax.ShapeDtypeStruct((b, t, n, h), jnp.float32)
  kv = jax.ShapeDtypeStruct((b, t, k, h), jnp.float32)
  segments = jax.ShapeDtypeStruct((b, t), jnp.int32)

  def loss(q, k, v, seg):
    return attention.splash_attend(q, k, v, seg, causal=causal).sum()

  def count(fn):
    if mesh_flag is None:
      return flops.count_flops(fn, q, kv, kv, segments)
    with jax.set_mesh(sharding.make_mesh(mesh_flag)):  # kernels inside shard_map
      return flops.count_flops(fn, q, kv, kv, segments)

  blocks_run = 3 if causal else 4
  block_contraction = 2.0 * b * n * block * block * h  # one [block, block] product, every head
  forward, train = count(loss), count(jax.grad(loss, argnums=(0, 1, 2)))
  assert forward.flops == 2 * blocks_run * block_contraction
  assert train.flops == (2 + 3 + 4) * blocks_run * block_contraction + 2.0 * b * n * t * h
  assert forward.unmasked_kernels == train.unmasked_kernels == 0


def test_generate_step_flops_match_analytic():
  """One decode step of the generation loop (tiny model, 8 fake CPU devices): the jaxpr count
  equals the analytic one exactly; the step's while loop is the one unbounded loop."""
  from mimo_jax.plan import steps
  cfg = load_config_file(os.path.join(ROOT, "experiments", "configs", "tiny.py"))
  mesh = sharding.make_mesh("data:1,fsdp:-1,tensor:1")
  spec = steps.generate_spec(cfg, mesh, rows=8, prompt_positions=16, max_new=16)
  count = flops.count_flops(spec.fn, *spec.args)
  assert count.flops == spec.analytic_flops
  assert count.unbounded_loops == 1


@pytest.mark.parametrize("message, required, available", [
    ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
     "temporaries (53.46G) exceeds available HBM (15.75G).", 53.46, 15.75),
    ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space "
     "hbm. Used 120.50G of 95.74G hbm. Exceeded hbm capacity by 24.76G.", 120.5, 95.74)])
def test_parse_oom(message, required, available):
  oom = report.parse_oom(message)
  assert oom["required_bytes"] == pytest.approx(required * 2**30)
  assert oom["available_bytes"] == pytest.approx(available * 2**30)
  assert oom["shortfall_bytes"] == pytest.approx((required - available) * 2**30)


def _backbone_step_spec(cfg, mesh, rows=8, length=32):
  """A plain SGD step over the backbone alone (not the training job's step)."""
  specs = backbone.param_specs(cfg)
  shardings = sharding.named_shardings(logical_axes(specs), mesh)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_params(specs), shardings)
  rows_sharding = NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
  tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=rows_sharding)

  def step(p, t):
    def loss(p):
      logits, _ = backbone.forward(p, cfg, tokens_bt=t)
      return jnp.mean(jax.nn.logsumexp(logits, axis=-1))
    value, grads = jax.value_and_grad(loss)(p)
    return jax.tree.map(lambda w, g: w - 1e-3 * g, p, grads), value

  fn = jax.jit(step, in_shardings=(shardings, rows_sharding), out_shardings=(shardings, None),
               donate_argnums=0)
  return report.StepSpec("backbone", fn, (params, tokens), {"params": params, "batch": tokens},
                         rows * length, lm_flops.backbone_train_flops(cfg, rows, length))


@needs_libtpu
def test_over_budget_is_a_verdict_with_the_shortfall():
  # 4M-entry vocabulary at width 2048: embeddings + lm_head alone are 15.3 GiB per v5e chip.
  cfg = config.tiny(hidden_size=2048, num_attention_heads=16, num_key_value_heads=8,
                    head_dim=128, vocab_size=4_000_000)
  topo = topology.parse_topology("v5e:2x2")
  mesh = topology.topology_mesh(topo, "data:1,fsdp:-1,tensor:1")
  result = report.plan_step(_backbone_step_spec(cfg, mesh), topo, mesh, mfu=0.4)
  assert result["fits"] is False
  memory = result["memory"]
  assert memory["required_bytes"] > memory["available_bytes"] == topo.chip.hbm_bytes
  assert memory["shortfall_bytes"] == pytest.approx(memory["required_bytes"] - topo.chip.hbm_bytes)
  assert "does NOT fit: short by" in report.to_markdown(result)


@pytest.fixture(scope="module")
def tiny_train_plan():
  """The training job's step for the tiny config (2 micro-batches, full remat, chunked text
  CE), compiled for a v5e 2x2 slice through the planner's entry point."""
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed")
  from mimo_jax.plan.__main__ import run
  cfg = load_config_file(os.path.join(ROOT, "experiments", "configs", "tiny.py"))
  cfg.train.grad_accum_steps = 2
  cfg.model.remat_policy = "full"
  cfg.loss.text_chunk_size = 8
  return run(cfg, "v5e:2x2", 1, "data:1,fsdp:-1,tensor:1", "train", 0.4, 0, 0, 0)


def test_train_plan_memory_is_consistent(tiny_train_plan):
  memory = tiny_train_plan["memory"]
  assert tiny_train_plan["fits"] is True
  assert memory["peak_bytes"] >= memory["arguments_bytes"] + memory["temp_bytes"]
  # Parameters, Adam moments and the batch are all arguments (plus counters and the RNG); XLA
  # pads small arrays to TPU tiles, which at tiny widths adds up to about half again.
  parts = memory["parts_bytes"]
  assert sum(parts.values()) <= memory["arguments_bytes"] < 2 * sum(parts.values())
  # Two fp32 moments per trained parameter; the patch decoder is trained in phase 2 (tiny.py).
  assert 2 * parts["params"] <= parts["optimizer state"] < 2 * parts["params"] + 1024
  assert memory["free_bytes"] == pytest.approx(memory["capacity_bytes"] - memory["peak_bytes"])


def test_train_plan_flops_count_every_micro_batch(tiny_train_plan):
  fl = tiny_train_plan["flops"]
  # The micro-batch scan's trip count is multiplied in: the whole batch is counted.
  assert abs(fl["jaxpr_model_over_analytic"] - 1) < 0.05
  assert fl["jaxpr_flops"] > fl["jaxpr_model_flops"]  # full remat recomputes the forward
  assert fl["unbounded_while_loops"] == 0
  speed = tiny_train_plan["speed"]
  assert speed["compute_s"] == pytest.approx(fl["jaxpr_model_flops"] / (4 * 197e12 * 0.4))
  assert speed["hbm_read_s"] == pytest.approx(tiny_train_plan["memory"]["arguments_bytes"] / 819e9)
  assert speed["step_s"] == max(speed["compute_s"], speed["hbm_read_s"])


def test_report_saves_json_and_markdown(tiny_train_plan, tmp_path):
  json_path, md_path = report.save(tiny_train_plan, str(tmp_path / "plan"))
  with open(json_path) as f:
    assert json.load(f) == json.loads(json.dumps(tiny_train_plan))
  with open(md_path) as f:
    text = f.read()
  assert "**Verdict: fits**" in text and "train/generation on v5e:2x2" in text
