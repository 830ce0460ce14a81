"""Tiny codec (tokenizer) training on CPU: the official tiny architecture with small codebooks.

  python -m mimo_jax.corpus --output=/tmp/corpus --num_utterances=64 --languages=en
  python -m mimo_jax.train_codec --config=experiments/configs/codec_tiny.py \
      --config.data.manifest=/tmp/corpus/manifest.jsonl --workdir=/tmp/codec_tiny

Stage 2 from the stage-1 run: --config.stage=2 --config.init_from=/tmp/codec_tiny --workdir=...

With the audio-to-text loss of the report's stage 1 (weight 10; off here by default, since it needs
transcripts and a text tokenizer): --config.loss.a2t=10 --config.a2t.tokenizer=TOK_DIR
--config.data.whole_clips=True --config.data.crop_seconds=4 (whole clips up to 4 s, padded).

Codebooks are 64 / 32 entries (the released 1024 / 128 need batches of thousands of frames for
the EMA counts to stay above the dead-code threshold of 2): a step sees batch_size x 25 frames
per second of crop, here 8 x 25 = 200. Learning rates are the usual GAN-codec values scaled up
for a few hundred steps. Optimizer, schedule and batch of the released tokenizer are not
published (spec §1.6): these are project choices.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.codec = ml_collections.ConfigDict({
      "preset": "tiny",
      # codebook_size and anything else of CodecConfig (official config.json keys).
      "overrides": ml_collections.ConfigDict({"num_quantizers": 4,
                                              "codebook_size": (64, 32)}),
  })
  c.stage = 1
  c.init_from = ""  # stage 2: a tokenizer folder or a stage-1 workdir (its export/)
  c.seed = 0
  c.steps = 300
  c.mesh = "data:1,fsdp:-1,tensor:1"
  c.data = ml_collections.ConfigDict({
      "manifest": "", "crop_seconds": 1.0, "batch_size": 8, "min_seconds": 0.3,
      "max_seconds": 60.0,
      # Each clip whole from its start, padded to crop_seconds (A2T needs it), not a random crop.
      "whole_clips": False})
  c.rvq = ml_collections.ConfigDict({"decay": 0.99, "epsilon": 1e-5, "kmeans_iters": 50,
                                     "threshold": 2.0})
  # a2t: weight of the audio-to-text loss (stage 1 only; the report uses 10, 0 turns it off).
  c.loss = ml_collections.ConfigDict({"recon": 1.0, "commit": 1.0, "adv": 1.0, "fm": 2.0,
                                      "a2t": 0.0})
  # The A2T auxiliary decoder (`mimo_jax.codec.a2t`; its size in the report is unpublished) and
  # the text tokenizer (tokenizer.json or its folder) that turns transcripts into its targets.
  c.a2t = ml_collections.ConfigDict({"tokenizer": "", "max_text_tokens": 64, "d_model": 64,
                                     "layers": 2, "heads": 4, "d_ff": 128})
  c.optimizer = ml_collections.ConfigDict({
      "lr": 2e-3, "warmup_steps": 20, "end_lr_ratio": 0.1, "b1": 0.8, "b2": 0.99,
      "weight_decay": 0.01, "clip": 1.0})
  c.disc = ml_collections.ConfigDict({
      "lr": 2e-4, "b1": 0.8, "b2": 0.99, "clip": 10.0,
      "model": ml_collections.ConfigDict({
          "periods": (2, 3, 5), "mpd_channels": (8, 16, 32, 32), "stft_ffts": (512, 256, 128),
          "stft_filters": 8, "stft_dilations": (1, 2, 4)}),
  })
  c.log_every = 10
  c.checkpoint_every = 50
  c.keep_checkpoints = 2
  # Non-finite steps (loss or gradient norm) in a row after which the run stops, with a
  # checkpoint of the last good state (each such step's update is skipped).
  c.max_bad_steps = 5
  c.tensorboard = True
  c.export = True
  return c
