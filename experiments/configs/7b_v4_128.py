"""MiMo-Audio 7B pre-training on v4-128: 64 v4 chips (megacore, 30.75 GiB HBM each).

The spec's batch of 16.8M tokens per optimizer step (2048 sequences x 8192 LLM positions) in 128
micro-batches: FSDP over 16 groups of 4 chips, each group splitting attention heads, FFN and
vocabulary 4 ways (tensor): 2048 / 128 = 16 sequences per micro-batch, one per group. Each mesh
axis is a product of whole axes of the 4x4x4 torus (16 = 4x4, 4), as jax.make_mesh requires
(fsdp:32,tensor:2 would split a physical axis). The planner's report for both phases is in
experiments/results/plan_7b_v4_128_*.md:

  python -m mimo_jax.plan --config=experiments/configs/7b_v4_128.py --topology=v4-128 \
      --phase=understanding   # or generation

The recipe (precision, remat, chunked CE, splash attention, audio capacity, phase 2 overrides)
is `mimo_jax.train.config.recipe_7b`.
"""

from mimo_jax.train.config import recipe_7b


def get_config():
  cfg = recipe_7b()
  cfg.train.grad_accum_steps = 128
  cfg.mesh = "data:1,fsdp:16,tensor:4"
  return cfg
