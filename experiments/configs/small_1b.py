"""A ~1B MiMo-Audio shape for one accelerator host (a GPU, or a TPU VM of 4-8 chips).

The full tokenizer vocabulary (151,680) and the 7B's special-token layout, with a narrower and
shallower backbone (1536 x 20 layers, ~970M with embeddings and lm_head) and 512-wide patch
encoder (4 layers) and patch decoder (8 layers): about 1.0B parameters in all. bf16 compute over
fp32 master weights, full remat, text cross-entropy in chunks of 512 positions (the fp32 logits
over 151,680 entries would dominate memory otherwise). Learning rates are the paper's (spec §5.1).

  python -m mimo_jax.train --config=experiments/configs/small_1b.py --workdir=gs://BUCKET/run \
      --config.data.source=shards --config.data.path=gs://BUCKET/shards
"""

from mimo_jax.train.config import defaults


def get_config():
  cfg = defaults()
  cfg.model.preset = "7b"
  cfg.model.overrides = {
      "hidden_size": 1536, "num_hidden_layers": 20, "num_attention_heads": 12,
      "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 4096,
      "local_dim": 512, "local_layers": 8, "local_attn_heads": 8, "local_ffn_dim": 2048,
      "input_local_dim": 512, "input_local_layers": 4,
  }
  cfg.model.remat_policy = "full"
  cfg.train.phase = "understanding"
  cfg.train.steps = 20000
  cfg.train.batch_size = 32
  cfg.train.positions = 2048
  cfg.loss.text_chunk_size = 512
  cfg.data.source = "synthetic"  # set to 'shards' with data.path for real data
  cfg.data.empty_id = 151667  # <|empty|> in the MiMo tokenizer (spec §2.1)
  cfg.checkpoint.every_steps = 1000
  cfg.log.every_steps = 20
  return cfg
