"""A training run's params as an official MiMo-Audio folder (LoRA adapters merged): what the
launcher's `--export_dir` and `python -m mimo_jax.convert` write, with one code path (a stored
run is read by `run_dir.load_run`).

The export streams: `lora.merged_view` merges an adapted kernel one layer at a time as it is
written, and `convert.hf.export_checkpoint` reads and writes one tensor at a time.
"""

from __future__ import annotations

from mimo_jax.convert.hf import export_checkpoint
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.train import lora
from mimo_jax.train.state import TrainSetup

MAX_SHARD_BYTES = 5 * 2**30  # the HF default shard size


def export(state: dict, setup: TrainSetup, out_dir: str, *, dtype: str = "float32",
           max_shard_bytes: int = MAX_SHARD_BYTES,
           tokenizer: str | TextTokenizer | None = None, codec: str | None = None) -> list[str]:
  """Writes state["params"] (with state["lora"] merged, if any) as an official checkpoint;
  see `export_checkpoint` for the tokenizer and codec. Every process calls it."""
  params = state["params"]
  if "lora" in state:
    params = lora.merged_view(params, state["lora"], setup.opt.lora_rank, setup.opt.lora_alpha)
  return export_checkpoint(params, setup.model, out_dir, dtype=dtype,
                           max_shard_bytes=max_shard_bytes, tokenizer=tokenizer, codec=codec)
