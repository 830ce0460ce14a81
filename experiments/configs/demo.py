"""The speech LM of the main job's recipes (`python -m mimo_jax.demo`, which sets the steps):
about 1M parameters, sized for the espeak-ng corpora on 2 CPU cores, over the demo codec (8
stages of 64 / 32 codes) and a 512-entry BPE text tokenizer.

  python -m mimo_jax.train --config=experiments/configs/demo.py \\
      --config.data.path=SHARDS --config.data.tokenizer=TOKENIZER --workdir=DIR
"""

from mimo_jax.train.config import defaults

# Must match the codec the shards were made with (`mimo_jax.demo.CODEBOOK_SIZES`): the LM adds
# one `<|empty|>`-code row per channel.
CODEBOOK_SIZES = (64, 64, 32, 32, 32, 32, 32, 32)


def get_config():
  cfg = defaults()
  cfg.model.preset = "tiny"
  cfg.model.dtype = "float32"  # CPUs have no fast bf16 matmul
  # 2-4 layers per stack: unrolled, the phase-2 step ran ~6% faster on CPU (interleaved in one
  # process) and compiled no slower.
  cfg.model.scan_layers = False
  cfg.model.overrides = {
      "hidden_size": 128, "num_hidden_layers": 4, "intermediate_size": 384,
      "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
      "local_dim": 64, "local_layers": 2, "local_attn_heads": 4, "local_ffn_dim": 128,
      "input_local_dim": 64, "input_local_layers": 2,
      "speech_vocab_size": tuple(n + 1 for n in CODEBOOK_SIZES),
      "speech_zeroemb_idx": CODEBOOK_SIZES,
  }
  cfg.train.batch_size = 8
  cfg.train.positions = 128
  cfg.train.warmup_ratio = 0.05
  # From scratch, not fine-tuning a pretrained 7B: one rate of 1e-3 for every part (the paper's
  # 3e-5 / 2e-4 are for MiMo-7B-Base's weights).
  cfg.train.learning_rates = {"llm": 1e-3, "patch_encoder": 1e-3, "patch_decoder": 1e-3}
  # The paper's 0.01 on `<|empty|>` targets slows learning when to switch from text to audio by
  # 100x; calibrated at 1.0, the switch is learnt within the recipe (see mimo_jax.demo).
  cfg.loss.empty_loss_weight = 1.0
  cfg.data.source = "shards"
  cfg.checkpoint.every_steps = 250
  cfg.checkpoint.keep = 2
  cfg.log.every_steps = 25
  return cfg
