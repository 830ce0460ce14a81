"""`config.data.task_weights` changes a phase's task mixture, and bad specs name the field;
captioning leaves the mixture when no record of the shards has a caption."""

import json
import logging

import numpy as np
import pytest

from mimo_jax.config import ConfigError
from mimo_jax.data import pretokenize, templates
from mimo_jax.train import config, data


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


def _shards_with_captions(tmp_path, captions: list[int]) -> list[str]:
  """Shard files whose saved statistics count `captions[k]` captioned records of 10 each."""
  paths = []
  for k, n in enumerate(captions):
    path = tmp_path / pretokenize.shard_name(k, len(captions))
    path.write_bytes(b"")
    (tmp_path / (path.name[:-len(pretokenize.SHARD_SUFFIX)] + ".json")).write_text(
        json.dumps({"written": 10, "captions": n}))
    paths.append(str(path))
  return paths


def test_captioning_is_dropped_and_logged_once_when_no_record_has_a_caption(tmp_path, caplog):
  mixture = config.task_mixture("understanding", "")
  (tmp_path / "a").mkdir()
  captioned = _shards_with_captions(tmp_path / "a", [0, 3])
  assert data.without_uncaptioned(mixture, captioned) == mixture
  (tmp_path / "b").mkdir()
  uncaptioned = _shards_with_captions(tmp_path / "b", [0, 0])
  with caplog.at_level(logging.WARNING):
    dropped = data.without_uncaptioned(mixture, uncaptioned)
  assert dropped == {k: w for k, w in mixture.items() if k != "audio_caption"}
  logged = [r.getMessage() for r in caplog.records if "audio_caption" in r.getMessage()]
  assert len(logged) == 1 and "none of the 20 records" in logged[0]
  with pytest.raises(ConfigError, match="config.data.task_weights: without audio_caption"):
    data.without_uncaptioned({"audio_caption": 1.0, "asr": 0.0}, uncaptioned)
