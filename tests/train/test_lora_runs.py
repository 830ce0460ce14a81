"""A LoRA run's params checkpoint is the frozen base: loading it alone must fail, not drop the
adapters silently."""

import json

import pytest

from mimo_jax.config import ConfigError
from mimo_jax.inference import MimoAudio
from mimo_jax.train.run_dir import refuse_lora_run


def _run_dir(tmp_path, rank):
  (tmp_path / "run.json").write_text(json.dumps({"optimizer": {"lora_rank": rank}}))
  return str(tmp_path)


def test_full_runs_load(tmp_path):
  refuse_lora_run(_run_dir(tmp_path, 0), "--init_from")  # no error


def test_lora_runs_are_refused_by_init_from_and_generation(tmp_path):
  run = _run_dir(tmp_path, 8)
  with pytest.raises(ConfigError, match=r"--init_from=.*LoRA adapters \(rank 8\).*--export_dir"):
    refuse_lora_run(run, "--init_from")
  with pytest.raises(ConfigError, match=r"--ckpt=.*LoRA adapters"):
    MimoAudio.load(run, codec_ckpt=str(tmp_path / "unused"))
