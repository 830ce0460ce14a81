"""MiMo-Audio 7B pre-training on two v5e-256 slices joined over the data-centre network (DCN).

Each slice runs the v5e-256 layout (`7b_v5e_256.py`: FSDP over 32 groups of 8 chips, tensor
sharding inside a group); the `data` axis spans the two slices, so the only traffic over DCN is
the gradient reduction between slices, once per micro-batch. The spec's batch of 2048 sequences x
8192 positions is then 32 micro-batches of 64 sequences (one per group in each slice, as on one
slice): the plan peaks at 10.96 GiB per chip (one slice: 12.43). The planner's report is in
experiments/results/plan_7b_v5e_256x2_generation.md:

  python -m mimo_jax.plan --config=experiments/configs/7b_v5e_256x2.py --topology=v5e-256 \
      --num_slices=2 --phase=generation

The recipe (precision, remat, chunked CE, splash attention, audio capacity, phase 2 overrides) is
`mimo_jax.train.config.recipe_7b`.
"""

from mimo_jax.train.config import recipe_7b


def get_config():
  cfg = recipe_7b()
  cfg.train.grad_accum_steps = 32
  cfg.mesh = "dcn:2,data:1,fsdp:32,tensor:8"
  return cfg
