"""MiMo-Audio 7B pre-training on v5e-256: 256 v5e chips (15.75 GiB HBM each).

The spec's batch of 16.8M tokens per optimizer step (2048 sequences x 8192 LLM positions) in 64
micro-batches: FSDP over 32 groups of 8 chips, each group splitting attention heads, FFN and
vocabulary 8 ways (tensor): 2048 / 64 = 32 sequences per micro-batch, one per group. A v5e chip
has 15.75 GiB: without tensor sharding one sequence's [32 heads, 8192, 8192] attention scores
alone would not fit. The planner's report for both phases is in
experiments/results/plan_7b_v5e_256_*.md:

  python -m mimo_jax.plan --config=experiments/configs/7b_v5e_256.py --topology=v5e-256 \
      --phase=understanding   # or generation

Phase 2 needs the recipe's audio capacity: with the patch encoder and decoder on every position
it peaked at 16.7 GiB (0.9 GiB over, XLA or splash attention alike: the patch decoder's
activations are what grow); on 62.5% of the positions it peaks at 12.4 GiB.

The recipe (precision, remat, chunked CE, splash attention, audio capacity, phase 2 overrides)
is `mimo_jax.train.config.recipe_7b`. A two-slice version is `7b_v5e_256x2.py`.
"""

from mimo_jax.train.config import recipe_7b


def get_config():
  cfg = recipe_7b()
  cfg.train.grad_accum_steps = 64
  cfg.mesh = "data:1,fsdp:32,tensor:8"
  return cfg
