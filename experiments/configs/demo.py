"""The demo's speech LM: `tiny` sized for the demo codec (8 stages of 64 / 32 codes) and a
512-entry BPE text tokenizer, trained on the espeak-ng corpus's pre-tokenised shards.

  python -m mimo_jax.train --config=experiments/configs/demo.py \
      --config.data.path=SHARDS --config.data.tokenizer=TOKENIZER --workdir=DIR

`python -m mimo_jax.demo` runs it for both phases (phase 2 with --init_from the phase-1 run).
"""

from mimo_jax.train.config import defaults

# Must match the codec the shards were made with (`--config.codec.overrides.codebook_size` in
# mimo_jax.demo): the LM adds one `<|empty|>`-code row per channel.
CODEBOOK_SIZES = (64, 64, 32, 32, 32, 32, 32, 32)


def get_config():
  cfg = defaults()
  cfg.model.preset = "tiny"
  cfg.model.dtype = "float32"  # CPUs have no fast bf16 matmul
  cfg.model.overrides.speech_vocab_size = tuple(n + 1 for n in CODEBOOK_SIZES)
  cfg.model.overrides.speech_zeroemb_idx = CODEBOOK_SIZES
  cfg.train.phase = "understanding"
  cfg.train.steps = 300
  cfg.train.batch_size = 8
  cfg.train.positions = 128
  cfg.train.warmup_ratio = 0.05
  # 10x the paper's learning rates so that a few hundred steps show learning (ratios kept).
  cfg.train.lr_scale = 10.0
  cfg.data.source = "shards"
  cfg.checkpoint.every_steps = 100
  cfg.checkpoint.keep = 2
  cfg.log.every_steps = 10
  return cfg
