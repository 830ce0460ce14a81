"""The model the serving tests run: the official tiny checkpoint made to answer with audio."""

import pytest

from mimo_jax import inference
from tests.helpers import speaking_params

EMPTY = 412  # the fixture tokenizer's <|empty|>


@pytest.fixture(scope="session")
def speaking(official_tiny_lm_dir, official_tiny_codec_dir):
  mimo = inference.MimoAudio.load(official_tiny_lm_dir, official_tiny_codec_dir, dtype="float32")
  return inference.MimoAudio(speaking_params(mimo, EMPTY), mimo.cfg, mimo.codec_params,
                             mimo.codec_cfg, mimo.tokenizer)
