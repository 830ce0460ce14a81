"""Tiny speech LM, SFT phase, over pre-tokenised SFT data: conversations in the JSONL `messages`
format of `mimo_jax.data.manifest` (every chat task) and utterances (the asr_sft / tts_sft
mixture).

  python -m mimo_jax.pretokenize --manifest=sft.jsonl --codec_ckpt=DIR --output=/tmp/sft_shards
  python -m mimo_jax.train --config=experiments/configs/tiny_sft.py --workdir=/tmp/tiny_sft \\
      --config.data.path=/tmp/sft_shards --config.data.tokenizer=TOK_DIR [--init_from=RUN]
"""

import os

from mimo_jax.train.config import load_file


def get_config():
  cfg = load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py"))
  cfg.train.phase = "sft"
  # A conversation (system prompt, voice prompt, user audio, spoken reply) is several utterances
  # long; an example longer than a sequence is skipped, not cut.
  cfg.train.positions = 384
  cfg.data.source = "shards"
  return cfg
