"""A run started from an official folder whose shape is not the config's preset (issue 19): its
run.json records the imported model, so it resumes, exports, loads for generation and serves as
another run's --init_from; a resume that changes the data stream is refused (issue 15)."""

import os

import numpy as np
import transformers

from mimo_jax import config
from mimo_jax.convert import __main__ as convert_cli
from mimo_jax.convert.hf import AUDIO_TOKENIZER_DIR, export_checkpoint
from mimo_jax.convert.names import official_shapes
from mimo_jax.convert.safetensors_io import SafetensorsReader
from mimo_jax.inference import MimoAudio
from mimo_jax.lm import model
from mimo_jax.train import run_json
from tests.convert.test_export import _assert_default_modes, _assert_same_tensors, _header
from tests.helpers import random_params
from tests.train.test_runs import CONFIG, Runner, read

FLAGS = (f"--config={CONFIG}", "--config.checkpoint.every_steps=2",
         "--config.log.tensorboard=False", "--mesh=data:1,fsdp:1,tensor:1")


def test_run_from_an_official_folder_resumes_exports_and_loads(tmp_path, official_tiny_lm_dir,
                                                               official_tiny_codec_dir):
  runner = Runner(str(tmp_path))
  official, exported = str(tmp_path / "official"), str(tmp_path / "exported")
  cfg = config.tiny(hidden_size=96, intermediate_size=160)  # the config's preset is tiny
  export_checkpoint(random_params(model.param_specs(cfg)), cfg, official,
                    tokenizer=official_tiny_lm_dir)
  run = (*FLAGS, f"--init_from={official}")
  runner.run("run", *run, "--config.train.steps=2", devices=1)
  workdir = runner.workdir("run")
  assert run_json.read(workdir)["model"]["hidden_size"] == 96

  text = runner.run("run", *run, "--config.train.steps=4", f"--export_dir={exported}",
                    f"--export_tokenizer={official}", f"--export_codec={official_tiny_codec_dir}",
                    devices=1)
  assert "resuming from" in text and "finished at step 4" in text
  assert _header(exported) == {name: (shape, "F32") for name, shape in
                               official_shapes(model.param_specs(cfg)).items()}
  assert transformers.AutoTokenizer.from_pretrained(exported).convert_tokens_to_ids(
      "<|empty|>") == 412
  assert os.path.isfile(os.path.join(exported, AUDIO_TOKENIZER_DIR, "model.safetensors"))
  _assert_default_modes(exported)

  # The converter writes the same folder from the run (one code path).
  assert convert_cli.run(workdir, str(tmp_path / "converted"), tokenizer=official) == 0
  _assert_same_tensors(str(tmp_path / "converted"), exported)

  # Generation loads the run with its imported shape.
  mimo = MimoAudio.load(workdir, official_tiny_codec_dir, tokenizer=official, dtype="float32")
  assert mimo.cfg.hidden_size == 96
  np.testing.assert_array_equal(np.asarray(mimo.params["lm_head"]["kernel"]).T,
                                SafetensorsReader(exported)["lm_head.weight"])

  # Another run starts from it (phase 2 from phase 1): the model comes from its run.json.
  runner.run("next", *FLAGS, f"--init_from={workdir}", "--config.train.steps=1", devices=1)
  assert run_json.read(runner.workdir("next"))["model"]["hidden_size"] == 96

  # Resuming with another batch size would change the data stream: refused, exit status 2.
  proc, log = runner.start("run", *run, "--config.train.steps=6", "--config.train.batch_size=4",
                           devices=1)
  assert proc.wait(600) == 2
  assert "resuming would change the run (train.batch_size: 8 -> 4)" in read(log)
