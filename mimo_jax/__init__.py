"""mimo-jax: MiMo-Audio in JAX/Flax.

`mimo_jax.MimoAudio` (speech LM + codec + text tokenizer with task methods) is imported on first
use, so `import mimo_jax` stays light for the commands that need only part of the package.
"""


def __getattr__(name: str):
  if name == "MimoAudio":
    from mimo_jax.inference import MimoAudio  # noqa: PLC0415
    return MimoAudio
  raise AttributeError(f"module 'mimo_jax' has no attribute {name!r}")
