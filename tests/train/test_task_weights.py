"""`config.data.task_weights` changes a phase's task mixture, and bad specs name the field."""

import numpy as np
import pytest

from mimo_jax.config import ConfigError
from mimo_jax.data import templates
from mimo_jax.train import config


def test_weights_replace_the_phases_own():
  mixture = config.task_mixture("generation", "asr=3, text=0")
  assert mixture == {**templates.PHASE_MIXTURES["generation"], "asr": 3.0, "text": 0.0}
  assert config.task_mixture("understanding", "") == templates.PHASE_MIXTURES["understanding"]
  only_asr = {"understanding": config.task_mixture(
      "understanding", "interleaved=0,audio_caption=0,text=0")}
  drawn = {templates.sample_task("understanding", np.random.default_rng(i), only_asr)
           for i in range(50)}
  assert drawn == {"asr"}


@pytest.mark.parametrize("spec, message", [
    ("asr", "expected 'task=weight'"), ("asr=-1", "expected 'task=weight'"),
    ("asr=x", "expected 'task=weight'"), ("dance=1", "unknown task 'dance'"),
    ("interleaved=0,asr=0,audio_caption=0,text=0", "no task with a positive weight")])
def test_bad_specs_name_the_field(spec, message):
  with pytest.raises(ConfigError, match=f"config.data.task_weights: .*{message}"):
    config.task_mixture("understanding", spec)
