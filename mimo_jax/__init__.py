"""mimo-jax: MiMo-Audio in JAX/Flax.

The house plan. Data flows one way; no package reaches back up the chain:

  audio files ──> codec ──> shards ──> pipeline ──> step ──> checkpoint ──> generate / evaluate /
  (data.corpus,   (encode)  (data.     (data.       (train)  (train.         convert / serve
   manifests)               pretok-    pipeline,             run_dir reads
                            enize)     templates,            every run and
                                       packing)              official folder)

Which package owns what:

  config.py, sharding.py   leaves everyone imports: the model config (official config.json keys,
                           presets) and meshes / logical-axis rules
  nn/                      pure building blocks (norms, RoPE, attention, MLPs, scanned stacks)
  codec/                   the audio tokenizer: mel, encoder, RVQ, decoder, vocoder, streaming;
                           its training steps, losses and discriminators
  lm/                      the speech LM: layout, patch encoder, backbone, patch decoder, loss,
                           generation and samplers
  data/                    text tokenizer, corpus, manifests, audio checks, pre-tokenisation,
                           task templates, packing, Grain pipelines
  train/                   what runs and keeps a training job: the one loop (resume, SIGTERM,
                           non-finite guard, metrics, Orbax checkpoints, run.json) with its two
                           jobs, the speech LM's (state, optimizer, step) and the codec's
                           (`train.codec`, over codec/'s steps); and `run_dir`, the one reader
                           of run directories and official folders
  convert/                 our param trees <-> official / HF safetensors, both ways
  eval/                    metrics, judges and task runners behind `evaluate`
  plan/                    AOT compile and memory / speed report for a TPU topology
  serve/                   batched streaming serving over `lm.generate` and `codec.streaming`
  inference.py             `MimoAudio`: the model, codec and text tokenizer behind task methods

Commands: each is `python -m mimo_jax.<verb>` and the console script `mimo-<verb>`
(pyproject.toml): demo, corpus, tokenize, pretokenize, train, train_codec, generate, evaluate,
eval_codec, plan, convert. A command module is thin: `define_flags()` (absl flags, defined only
when run, so modules import each other freely), `main(argv)` (flags -> one library call -> exit
status) and `console()`; the work lives in the packages above.

`mimo_jax.MimoAudio` is imported on first use, so `import mimo_jax` stays light for the commands
that need only part of the package.
"""



def __getattr__(name: str):
  if name == "MimoAudio":
    from mimo_jax.inference import MimoAudio  # noqa: PLC0415
    return MimoAudio
  raise AttributeError(f"module 'mimo_jax' has no attribute {name!r}")
