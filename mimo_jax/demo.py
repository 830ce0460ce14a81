"""What runs today, end to end: a sharded backbone forward, cached greedy decoding, and an export
to the official safetensors layout that is read back and checked.

  python -m mimo_jax.demo --preset=tiny --mesh=data:1,fsdp:-1,tensor:1 --workdir=/tmp/mimo_demo

This is the project's main job until the training entry point lands; the weights are random.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from mimo_jax import config, sharding
from mimo_jax.convert.hf import export_checkpoint, import_checkpoint
from mimo_jax.lm import backbone
from mimo_jax.nn.params import logical_axes

_PRESET = flags.DEFINE_enum("preset", "tiny", sorted(config.PRESETS), "Model preset.")
_MESH = flags.DEFINE_string("mesh", "data:1,fsdp:-1,tensor:1", "Mesh axes and sizes.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/mimo_jax_demo", "Where the export is written.")
_BATCH = flags.DEFINE_integer("batch", 2, "Sequences per batch.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 16, "Prompt tokens per sequence.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 8, "Greedy tokens decoded with the KV cache.")
_EXPORT_DTYPE = flags.DEFINE_enum("export_dtype", "float32", ["float32", "bfloat16"],
                                  "Dtype of the exported safetensors.")


def greedy_decode(params, cfg, prompt_bt, new_tokens):
  """Prefill the prompt, then append one greedy token per step through the KV cache."""
  batch, prompt_len = prompt_bt.shape
  cache = backbone.init_cache(cfg, batch, prompt_len + new_tokens)

  @jax.jit
  def step(params, tokens_bt, positions_bt, cache):
    logits_btv, cache = backbone.forward(params, cfg, tokens_bt=tokens_bt,
                                         positions_bt=positions_bt, cache=cache)
    return jnp.argmax(logits_btv[:, -1], axis=-1)[:, None], cache

  positions_bt = jnp.broadcast_to(jnp.arange(prompt_len), (batch, prompt_len))
  token_b1, cache = step(params, prompt_bt, positions_bt, cache)
  generated = [token_b1]
  for i in range(new_tokens - 1):
    position_b1 = jnp.full((batch, 1), prompt_len + i)
    token_b1, cache = step(params, token_b1, position_b1, cache)
    generated.append(token_b1)
  return jnp.concatenate(generated, axis=1)


def main(argv):
  del argv
  cfg = config.preset(_PRESET.value)
  mesh = sharding.make_mesh(_MESH.value)
  logging.info("devices: %d x %s; mesh %s", jax.device_count(), jax.devices()[0].platform,
               dict(mesh.shape))
  specs = backbone.param_specs(cfg)
  params = sharding.init_sharded(specs, jax.random.key(0), mesh, jnp.dtype(cfg.param_dtype))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  prompt_bt = jax.random.randint(jax.random.key(1), (_BATCH.value, _PROMPT_LEN.value), 0,
                                 cfg.vocab_size)

  with jax.set_mesh(mesh):
    forward = jax.jit(lambda p, t: backbone.forward(p, cfg, tokens_bt=t)[0])
    forward(params, prompt_bt).block_until_ready()  # compile
    start = time.perf_counter()
    logits_btv = forward(params, prompt_bt).block_until_ready()
    elapsed = time.perf_counter() - start
    generated_bn = greedy_decode(params, cfg, prompt_bt, _NEW_TOKENS.value)
  print(f"backbone '{_PRESET.value}': {n_params / 1e6:.2f}M params, forward of "
        f"{prompt_bt.size} tokens in {elapsed * 1e3:.1f} ms, logits {logits_btv.shape}")
  print(f"greedy continuation of row 0: {np.asarray(generated_bn[0]).tolist()}")

  out_dir = os.path.join(_WORKDIR.value, "export")
  files = export_checkpoint(params, cfg, out_dir, dtype=_EXPORT_DTYPE.value)
  restored, _ = import_checkpoint(out_dir, cfg.replace(param_dtype=_EXPORT_DTYPE.value))
  restored = sharding.shard_params(restored, logical_axes(specs), mesh)
  with jax.set_mesh(mesh):
    restored_logits = forward(restored, prompt_bt)
  diff = float(jnp.max(jnp.abs(restored_logits - logits_btv)))
  print(f"exported {files} to {out_dir}; re-imported logits differ by {diff:.3g}")
  if _EXPORT_DTYPE.value == "float32" and diff != 0.0:
    raise SystemExit("round trip through the float32 export changed the logits")


if __name__ == "__main__":
  app.run(main)
