"""A tiny SFT run on each chat task from one JSONL file (`messages`): espeak-ng clips of the
project's corpus, pre-tokenised with the official tiny codec, each example's loss mask checked to
cover exactly its assistant turns, then a few train steps per task with the tiny SFT config
(`experiments/configs/tiny_sft.py`) with a finite loss. One pre-tokenised fixture and one compiled
train step serve every task."""

import io
import json
import os

import jax
import numpy as np
import pytest

from mimo_jax import sharding
from mimo_jax.codec.checkpoint import import_codec
from mimo_jax.data import corpus, manifest, pipeline, pretokenize, templates as T
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.lm import layout
from mimo_jax.train import config as train_config
from mimo_jax.train import data
from mimo_jax.train.state import TrainSetup, create_state
from mimo_jax.train.step import make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "tiny_sft.py")
BATCH = 2


def _conversations(clips: list[dict]) -> list[dict]:
  """Two conversations per chat task, over the corpus clips (audio paths and transcripts)."""
  audio = lambda i: {"audio": clips[i % len(clips)]["audio"]}
  said = lambda i: clips[i % len(clips)]["text"]
  spoken = lambda i: {"text": said(i), "audio": clips[i % len(clips)]["audio"]}
  turn = lambda role, *parts, **kw: {"role": role, "content": list(parts), **kw}
  lines = []
  for i in (0, 1):
    lines += [
        {"task": "asr_sft", "messages": [turn("user", audio(i), {"text": T.ASR_EN[i]}),
                                         turn("assistant", {"text": said(i)})]},
        {"task": "tts_sft", "messages": [turn("user", {"text": f"{T.TTS_EN[i]}: {said(i)}"}),
                                         turn("assistant", spoken(i))]},
        {"task": "instruct_tts_sft", "messages": [
            turn("system", {"text": T.STYLE_SYSTEM}) if i == 0 else
            turn("system", {"text": T.VOICE_STYLE_SYSTEM}, audio(i + 2)),
            turn("user", {"text": f"{T.TTS_EN[i]}: {said(i)}(slowly)"}),
            turn("assistant", {"text": T.EMPTY_THOUGHT}, spoken(i), thinking=True)]},
        {"task": "audio_understanding_sft", "messages": [
            turn("user", audio(i), {"text": "Who is speaking?"}),
            turn("assistant", {"text": f"A synthetic voice, {clips[i]['speaker']}."})]},
        {"task": "spoken_dialogue_sft", "messages": [
            turn("system", {"text": T.VOICE_PROMPT}, audio(i + 1)), turn("user", audio(i)),
            turn("assistant", spoken(i + 1)), turn("user", audio(i + 2)),
            turn("assistant", spoken(i + 3))]},
        {"task": "s2t_dialogue_sft", "messages": [
            turn("user", audio(i)), turn("assistant", {"text": said(i + 1)}),
            turn("user", audio(i + 2)), turn("assistant", {"text": said(i + 3)})]},
        {"task": "text_dialogue_sft", "messages": [
            turn("user", {"text": said(i)}),
            turn("assistant", {"text": f"Thinking.</think>\n{said(i + 1)}"}, thinking=bool(i))]},
        {"task": "chat", "messages": [
            turn("user", {"text": "Say this:"}, audio(i)), turn("assistant", spoken(i))]},
    ]
  return lines


@pytest.fixture(scope="module")
def sft(tmp_path_factory, official_tiny_codec_dir):
  root = tmp_path_factory.mktemp("sft")
  speech = corpus.build_corpus(str(root / "speech"), 4, seed=11, languages=("en",))
  clips = [json.loads(line) for line in open(speech)]
  for clip in clips:
    clip["audio"] = os.path.join("speech", clip["audio"])
  lines = _conversations(clips)
  path = root / "sft.jsonl"
  manifest.write_manifest(lines, str(path))
  tokenizer = TextTokenizer.train([c["text"] for c in clips] * 4, vocab_size=400)
  tokenizer.save(str(root / "tokenizer"))
  skips = manifest.Skips()
  records = manifest.read_manifest(str(path), skips)
  assert skips.total == 0 and len(records) == len(lines)
  params, codec_cfg = import_codec(official_tiny_codec_dir)
  report = pretokenize.run(records, skips, str(root / "shards"), params, codec_cfg, tokenizer,
                           pretokenize.Settings(records_per_shard=1), out=io.StringIO())
  assert report["written"] == len(lines), report["skips"]
  cfg = train_config.load_file(CONFIG)
  cfg.train.batch_size = BATCH
  cfg.data.path, cfg.data.tokenizer = str(root / "shards"), str(root / "tokenizer")
  train_config.validate(cfg)
  setup = TrainSetup.from_config(cfg)
  fmt = T.Formatter.from_config(setup.model, tokenizer)
  return {"lines": lines, "shards": pretokenize.shard_paths(str(root / "shards")), "cfg": cfg,
          "setup": setup, "fmt": fmt}


def _reply_text(message: dict) -> str:
  """What an assistant turn trains, as text: its parts (a spoken reply's stream opens with a
  `<|sostm|>` the context gives, unless text precedes it) and `<|im_end|>`."""
  out = ""
  for j, part in enumerate(message["content"]):
    if "audio" in part:
      out += ("<|sostm|>" if j else "") + part["text"] + "<|eot|><|eostm|>"
    else:
      out += part["text"]
  return out + "<|im_end|>"


def _records(sft):
  for path, line in zip(sft["shards"], sft["lines"]):
    reader = pipeline.grain.sources.ArrayRecordDataSource([path])
    yield line, pretokenize.deserialize(reader[0])


def test_each_examples_mask_covers_exactly_its_assistant_turns(sft):
  fmt, tok = sft["fmt"], sft["fmt"].layout.tokens
  make = pipeline.PhaseExamples(fmt, "sft", seed=0)
  tasks = set()
  for line, record in _records(sft):
    example = make(record, 0)
    assert "skip" not in example, (line["task"], example)
    tokens_p = layout.text_tokens(example["input_ids"], fmt.layout)
    mask_p = example["loss_mask"]
    edges_p = np.diff(np.concatenate([[0], mask_p.astype(int), [0]]))
    runs = list(zip(np.flatnonzero(edges_p == 1), np.flatnonzero(edges_p == -1)))
    replies = [m for m in line["messages"] if m["role"] == "assistant"]
    assert len(runs) == len(replies), line["task"]
    for (start, stop), reply in zip(runs, replies):
      run_p = tokens_p[start:stop]
      assert fmt.tokenizer.decode(run_p[run_p != tok.empty]) == _reply_text(reply), line["task"]
    # Every trained audio position is a patch of a spoken reply, and all of them are trained.
    reply_frames = sum(-(-len(part["codes"]) // 4) for m in record["messages"]
                       if m["role"] == "assistant" for part in m["parts"] if "codes" in part)
    assert (mask_p & (tokens_p == tok.empty)).sum() == reply_frames, line["task"]
    assert len(mask_p) <= sft["cfg"].train.positions, line["task"]
    tasks.add(line["task"])
  assert tasks == set(T.CHAT_TASKS)


def test_a_few_sft_steps_on_each_task_have_a_finite_loss(sft):
  cfg, setup, fmt = sft["cfg"], sft["setup"], sft["fmt"]
  mesh = sharding.make_mesh("data:1,fsdp:1,tensor:1", devices=jax.devices()[:1])
  empty_id = fmt.layout.tokens.empty
  train_step = make_train_step(setup, mesh, BATCH, cfg.train.positions, empty_id)
  state = create_state(setup, jax.random.key(0), mesh)
  by_task: dict[str, list[str]] = {}
  for path, line in zip(sft["shards"], sft["lines"]):
    by_task.setdefault(line["task"], []).append(path)
  for task, paths in sorted(by_task.items()):
    iterator = pipeline.make_train_iterator(paths, fmt, "sft", cfg.train.positions, BATCH, 0,
                                            mesh)
    for _ in range(2):
      batch = next(iterator)
      assert np.asarray(batch["loss_mask"]).sum() > 0, task
      state, metrics = train_step.fn(state, batch)
      assert metrics["finite"] and np.isfinite(metrics["loss"]), (task, metrics)
    assert iterator.skipped() == {}, task
  # The config's own source reads every task's shards as one stream.
  source = data.make_source(cfg, setup.model, mesh)
  state, metrics = train_step.fn(state, next(source.iterator))
  assert np.isfinite(metrics["loss"])
