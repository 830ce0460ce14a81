"""The task API on the official tiny checkpoints: loading (official folders, Orbax run dirs), the
prompt / sampler / stop set each task uses, text and audio answers, and streaming audio."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import soundfile

from mimo_jax import inference
from mimo_jax.codec import api as codec_api
from mimo_jax.config import ConfigError
from mimo_jax.data import templates
from mimo_jax.lm import layout
from mimo_jax.lm.sampling import GREEDY, SamplerConfig
from mimo_jax.train.checkpoint import Checkpointer
from tests.codec.common import CLIP, official_io
from tests.helpers import speaking_params

EOS, IM_END, EOSTM, EMPTY = 400, 402, 416, 412  # the fixture tokenizer's ids


@pytest.fixture(scope="module")
def mimo(official_tiny_lm_dir, official_tiny_codec_dir):
  return inference.MimoAudio.load(official_tiny_lm_dir, official_tiny_codec_dir, dtype="float32")


@pytest.fixture(scope="module")
def speaking(mimo):
  """The same model made to answer with audio (`helpers.speaking_params`)."""
  return inference.MimoAudio(speaking_params(mimo, EMPTY), mimo.cfg, mimo.codec_params,
                             mimo.codec_cfg, mimo.tokenizer)


def _wav_24k():
  return official_io()["wav_24k"][:24000]


def test_each_task_uses_its_template_preset_and_stop_set(mimo):
  codes_tc = mimo.encode_audio(_wav_24k(), 24000)
  cases = {
      "asr_sft": (templates.asr_sft(mimo.fmt, codes_tc), GREEDY, (EOS, IM_END)),
      "tts_sft": (templates.tts_sft(mimo.fmt, "hi"), SamplerConfig(temperature=0.6),
                  (EOS, EOSTM, IM_END)),
      "text_dialogue_sft": (templates.text_dialogue_sft(
          mimo.fmt, [templates.Turn("user", ("hi",))]), SamplerConfig(temperature=0.4, top_p=0.95),
          (EOS, IM_END)),
  }
  for task, (example, text_sampler, stop) in cases.items():
    request = mimo.request(example, None, 8, 0, 0, None, None, "free")
    assert request.text == text_sampler, task
    assert request.audio == SamplerConfig(temperature=0.9, top_p=0.95), task
    assert set(request.stop_ids) == set(stop), task
    assert request.given_text == (), task
    np.testing.assert_array_equal(request.prompt_kl, example.ids_kl)
  with pytest.raises(ValueError, match="holds an answer"):
    mimo.request(templates.tts_sft(mimo.fmt, "hi", codes_tc), None, 8, 0, 0, None, None, "free")
  # The given stream text: the sentence's ids and <|eot|>; only prompts that say it can.
  given = mimo.request(templates.tts_sft(mimo.fmt, "hi"), None, 8, 0, 0, None, None, "given")
  assert given.given_text == (*mimo.tokenizer.encode("hi"), mimo.tokens.eot)
  assert given.stream_chunks == (5, 5)
  with pytest.raises(ValueError, match="needs a prompt that says what the answer speaks"):
    mimo.request(cases["asr_sft"][0], None, 8, 0, 0, None, None, "given")


def test_asr_returns_the_text_channel(mimo):
  """Random weights say nothing meaningful; the answer is the decoded text channel of the
  greedy generation (less the stop token and stream markers). clip.wav is 16 kHz: resampled."""
  wav, sr = soundfile.read(CLIP, dtype="float32")
  text = mimo.asr(wav, sr, max_new=6)
  answer = mimo.generate([templates.asr_sft(mimo.fmt, mimo.encode_audio(wav, sr))],
                         max_new=6)[0]
  assert isinstance(text, str) and text == answer.text
  ids = answer.result.text_ids
  assert len(ids) == 6 or answer.result.stopped
  assert text == mimo.tokenizer.decode([i for i in ids if i not in (EOS, IM_END)]).strip()


def test_tts_audio_is_the_decoded_patches(speaking):
  wav = speaking.tts("hello", max_new=16, seed=3)
  answer = speaking.generate([templates.tts_sft(speaking.fmt, "hello")], max_new=16, seed=3)[0]
  assert (answer.result.text_ids == EMPTY).all() and len(answer.result.text_ids) == 16
  assert wav.shape == (16 * 4 * speaking.codec_cfg.samples_per_frame,)
  np.testing.assert_array_equal(wav, answer.wav)
  codes_tc = answer.result.tokens_kl[1:].T
  np.testing.assert_array_equal(wav, codec_api.decode(speaking.codec_params, speaking.codec_cfg,
                                                      codes_tc))


def test_streamed_audio_matches_the_one_shot_answer(speaking):
  """Same tokens as `generate`; with the official streaming windows the audio differs only at
  the streaming decoder's emission edge, within the bound tests/codec/test_streaming.py measures
  for the codec (max 1e-2, rms 1% of the signal's). 16 patches = 64 frames fed 16 at a time:
  the first audio comes once 40 frames (the held-back right overlap) are exceeded."""
  example = templates.tts_sft(speaking.fmt, "hello")
  pieces = list(speaking.stream(example, max_new=16, seed=3, chunk_steps=4))
  one_shot = speaking.generate([example], max_new=16, seed=3)[0].wav
  spf = speaking.codec_cfg.samples_per_frame
  assert [len(p) // spf for p in pieces] == [8, 56]
  streamed = np.concatenate(pieces)
  assert streamed.shape == one_shot.shape
  diff = np.abs(streamed - one_shot)
  assert diff.max() < 1e-2
  assert np.sqrt(np.mean(diff ** 2)) < 1e-2 * np.sqrt(np.mean(one_shot ** 2))


def test_a_training_run_directory_loads(mimo, tmp_path, official_tiny_lm_dir,
                                        official_tiny_codec_dir):
  """Orbax params of a run (`checkpoints/<step>/params`) with its `run.json` model config."""
  run = tmp_path / "run"
  with Checkpointer(str(run / "checkpoints"), async_save=False) as ckpt:
    ckpt.save(7, {"params": mimo.params}, force=True)
  (run / "run.json").write_text(json.dumps({"model": dataclasses.asdict(mimo.cfg)}))
  loaded = inference.MimoAudio.load(str(run), official_tiny_codec_dir,
                                    tokenizer=official_tiny_lm_dir)
  assert loaded.cfg == mimo.cfg
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(mimo.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ConfigError, match="run.json"):
    inference.MimoAudio.load(str(tmp_path), official_tiny_codec_dir, tokenizer=official_tiny_lm_dir)


def test_in_context_s2s_prompt_has_the_official_shape(mimo):
  """Few-shot speech-to-speech (Base format): instruction, then per shot input span, newline,
  output stream, blank line; then the query span, a newline and the opened answer stream."""
  rng = np.random.RandomState(0)
  codes = lambda n: rng.randint(0, 128, (n, 8))
  shots = [(codes(8), codes(12), "ok"), (codes(4), codes(8), "the")]
  example = templates.in_context_s2s(mimo.fmt, "Copy the voice.", shots, codes(8))
  assert example.is_prompt and set(example.stop_tokens) == {EOS, EOSTM}
  segments = layout.parse_sequence(example.ids_kl, mimo.fmt.layout)
  kinds = [type(s).__name__ for s in segments]
  assert kinds == ["TextSegment", "AudioSegment", "TextSegment", "StreamSegment", "TextSegment",
                   "AudioSegment", "TextSegment", "StreamSegment", "TextSegment",
                   "AudioSegment", "TextSegment"]
  text = lambda s: mimo.tokenizer.decode(s.ids_n)
  assert text(segments[0]) == "[Int]:Copy the voice.\n"
  assert [text(segments[i]) for i in (2, 4, 6, 8)] == ["\n", " \n\n", "\n", " \n\n"]
  assert text(segments[10]) == "\n<|sostm|>"
  np.testing.assert_array_equal(segments[3].codes_tc, shots[0][1])
  assert text(segments[3]) == "ok"


def test_package_exposes_mimo_audio():
  import mimo_jax  # noqa: PLC0415
  assert mimo_jax.MimoAudio is inference.MimoAudio
