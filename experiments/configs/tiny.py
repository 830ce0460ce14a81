"""Tiny speech LM on CPU: seconds per step, for the demo, tests and laptops.

  python -m mimo_jax.train --config=experiments/configs/tiny.py --workdir=/tmp/mimo_tiny

Learning rates are 10x the paper's (spec §5.1) so that a few hundred steps show learning; the
ratios between groups and the phase's frozen groups are kept.
"""

from mimo_jax.train.config import defaults


def get_config():
  cfg = defaults()
  cfg.model.preset = "tiny"
  cfg.model.dtype = "float32"  # CPUs have no fast bf16 matmul
  cfg.train.phase = "generation"
  cfg.train.steps = 200
  cfg.train.batch_size = 8
  cfg.train.positions = 32
  cfg.train.warmup_ratio = 0.05
  cfg.train.lr_scale = 10.0
  cfg.data.empty_id = 7
  cfg.data.synthetic_examples = 32
  cfg.checkpoint.every_steps = 50
  cfg.checkpoint.keep = 2
  cfg.log.every_steps = 10
  return cfg
