"""MiMo-Audio 7B pre-training on v5p-64: 32 v5p chips (95.74 GiB HBM each).

The spec's batch of 16.8M tokens per optimizer step (2048 sequences x 8192 LLM positions) in 64
micro-batches: pure FSDP over the 32 chips: 2048 / 64 = 32 sequences per micro-batch, one per
chip. The planner's report for both phases is in experiments/results/plan_7b_v5p_64_*.md:

  python -m mimo_jax.plan --config=experiments/configs/7b_v5p_64.py --topology=v5p-64 \
      --phase=understanding   # or generation

The recipe (precision, remat, chunked CE, splash attention, audio capacity, phase 2 overrides)
is `mimo_jax.train.config.recipe_7b`.
"""

from mimo_jax.train.config import recipe_7b


def get_config():
  cfg = recipe_7b()
  cfg.train.grad_accum_steps = 64
  cfg.mesh = "data:1,fsdp:-1,tensor:1"
  return cfg
