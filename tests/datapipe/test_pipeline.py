"""The Grain pipeline: deterministic per seed, resumable mid-epoch (also through Orbax), disjoint
hosts covering the epoch, the phase mixture's examples, corpus mixtures, global batches on 8 fake
devices and across two real processes, worker processes."""

import functools
import itertools
import json
import os
import socket
import subprocess
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mimo_jax import config, sharding
from mimo_jax.data import packing, pipeline, pretokenize, templates
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.lm import layout as L
from tests.datapipe import multihost_worker as w

P = 96
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_RECORDS = 40
WORDS = ("the quick brown fox jumps over a lazy dog while seven tired owls watch from old oak "
         "trees near the river bank at dusk").split()


@pytest.fixture(scope="module")
def fmt():
  tokenizer = TextTokenizer.train([" ".join(WORDS)] * 8, vocab_size=320)
  return templates.Formatter.from_config(config.preset("tiny"), tokenizer)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, fmt):
  """3 shards of synthetic records (random codes, short transcripts); record 7 has no text."""
  rng = np.random.default_rng(0)
  records = []
  for i in range(N_RECORDS):
    n_frames = int(rng.integers(8, 40))
    codes = np.stack([rng.integers(0, 1024 if c < 2 else 128, n_frames) for c in range(8)], 1)
    text = "" if i == 7 else " ".join(rng.choice(WORDS, int(rng.integers(2, 8))))
    records.append(pretokenize.serialize({
        "key": str(i), "audio": f"{i}.wav", "text": text, "speaker": f"s{i % 3}",
        "language": "en", "task": "", "seconds": n_frames / 25,
        "codes": codes.astype(np.uint16), "text_ids": fmt.tokenizer.encode(text, special=False)}))
  out = tmp_path_factory.mktemp("shards")
  for k, first in enumerate(range(0, N_RECORDS, 16)):
    pretokenize.write_shard(out / pretokenize.shard_name(k, 3), records[first:first + 16])
  return pretokenize.shard_paths(str(out))


def _record_id(layout: L.Layout, record: dict, index: int) -> dict:
  """An example of one text position holding the record's number (identifies what was read)."""
  del index
  ids = L.build_sequence([L.TextSegment([int(record["key"])])], layout)
  return {"input_ids": ids, "loss_mask": np.ones(1, bool)}


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _dataset(shards, fmt, seed=0, **kwargs):
  kwargs.setdefault("batch_size", 2)
  return pipeline.make_dataset(shards, pipeline.PhaseExamples(fmt, "generation", seed),
                               packing.Packer(P, fmt.layout), seed=seed,
                               pack_window_sequences=2, **kwargs)


def test_same_seed_same_batches_other_seed_other_batches(shards, fmt):
  a = _take(iter(_dataset(shards, fmt, seed=1)), 6)
  b = _take(iter(_dataset(shards, fmt, seed=1)), 6)
  c = _take(iter(_dataset(shards, fmt, seed=2)), 6)
  assert _same(a, b) and not _same(a, c)
  assert a[0]["input_ids"].shape == (2, 9, 4 * P)
  assert {a[0][k].shape for k in ("segment_ids", "positions", "loss_mask")} == {(2, P)}


def test_state_resumes_mid_epoch_with_identical_batches(shards, fmt):
  full = _take(iter(_dataset(shards, fmt)), 12)  # more than one epoch of 40 records
  it = iter(_dataset(shards, fmt))
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
  resumed = iter(_dataset(shards, fmt))
  resumed.set_state(state)
  assert _same(_take(resumed, 7), full[5:])


def test_phase_examples_read_back_and_unusable_records_are_counted(shards, fmt):
  it = iter(_dataset(shards, fmt, num_epochs=4, batch_size=1))
  batches = list(it)
  tasks = set()
  for batch in batches:
    ids, seg = batch["input_ids"][0], batch["segment_ids"][0]
    for s in range(1, seg.max() + 1):
      where = np.flatnonzero(seg == s)
      parsed = L.parse_sequence(ids[:, 4 * where[0]:4 * (where[-1] + 1)], fmt.layout)
      tasks.add(tuple(type(x).__name__ for x in parsed))
  # audio+text (asr/caption), stream (interleaved), text+stream (tts), audio (continuation), text
  assert {("AudioSegment", "TextSegment"), ("StreamSegment", "TextSegment"),
          ("TextSegment", "StreamSegment", "TextSegment"), ("AudioSegment", "TextSegment"),
          ("TextSegment",)} <= tasks
  skipped = packing.skipped(it.get_state())
  # Record 7 (no transcript) is skipped whenever its task needs text; the rest is never dropped.
  assert skipped and set(skipped) <= {"template_failed:interleaved", "template_failed:tts",
                                      "template_failed:text", "template_failed:asr"}
  n_segments = sum(int(b["segment_ids"].max()) for b in batches)
  assert n_segments + sum(skipped.values()) == 4 * N_RECORDS


def test_two_hosts_read_disjoint_records_that_cover_the_epoch(shards, fmt):
  seen = []
  for host in (0, 1):
    ds = pipeline.make_dataset(shards, functools.partial(_record_id, fmt.layout),
                               packing.Packer(8, fmt.layout), batch_size=1,
                               seed=3, process_index=host, process_count=2, num_epochs=1)
    ids = [int(t) for b in ds for t, s in zip(b["input_ids"][0, 0, ::4], b["segment_ids"][0])
           if s > 0]
    assert len(ids) == len(set(ids))
    seen.append(set(ids))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(N_RECORDS))
  assert len(seen[0]) == len(seen[1]) == N_RECORDS // 2


def test_train_iterator_builds_sharded_global_batches(shards, fmt):
  mesh = sharding.make_mesh("data:2,fsdp:4,tensor:1")
  it = pipeline.make_train_iterator(shards, fmt, "understanding", P, 8, seed=4, mesh=mesh,
                                    pack_window_sequences=2)
  local = _take(iter(pipeline.make_dataset(
      shards, pipeline.PhaseExamples(fmt, "understanding", 4), packing.Packer(P, fmt.layout),
      batch_size=8, seed=4, pack_window_sequences=2)), 3)
  first = next(it)
  assert set(first) == {"input_ids", "segment_ids", "positions", "loss_mask"}
  for k, v in first.items():
    assert isinstance(v, jax.Array) and v.shape[0] == 8
    assert v.sharding.spec[0] == ("data", "fsdp")
    assert len(v.addressable_shards) == 8 and v.addressable_shards[0].data.shape[0] == 1
    np.testing.assert_array_equal(np.asarray(v), local[0][k])
  state = it.get_state()
  second = {k: np.asarray(v) for k, v in next(it).items()}
  it.set_state(state)
  again = {k: np.asarray(v) for k, v in next(it).items()}
  assert _same([second], [again]) and _same([second], [local[1]])
  assert it.skipped() == packing.skipped(it.get_state())
  with pytest.raises(ValueError, match="phase"):
    pipeline.make_train_iterator(shards, fmt, "nope", P, 8, seed=4, mesh=mesh)


def test_worker_processes_are_deterministic_and_resume(shards, fmt):
  """Two worker processes: a restored state continues the stream exactly in a new iterator (the
  worker count must stay the same across save and restore), and every record still arrives."""
  it = iter(_dataset(shards, fmt, seed=5, worker_count=2, num_epochs=1, batch_size=1))
  head = _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  tail = list(it)
  resumed = iter(_dataset(shards, fmt, seed=5, worker_count=2, num_epochs=1, batch_size=1))
  resumed.set_state(state)
  assert _same(list(resumed), tail)
  in_process = list(_dataset(shards, fmt, seed=5, num_epochs=1, batch_size=1))
  n_segments = lambda batches: sum(int(b["segment_ids"].max()) for b in batches)
  assert n_segments(head + tail) == n_segments(in_process)


def test_orbax_checkpoint_of_the_iterator_resumes_it(shards, fmt, tmp_path):
  it = iter(_dataset(shards, fmt, seed=6))
  _take(it, 4)
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
    manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = _take(it, 3)
  resumed = iter(_dataset(shards, fmt, seed=6))
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
    manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert _same(_take(resumed, 3), expected)


def test_corpora_mix_by_weight_and_a_record_task_overrides_the_mixture(shards, fmt):
  ds = pipeline.make_dataset({"a": (shards[:2], 3.0), "b": (shards[2:], 1.0)},
                             functools.partial(_record_id, fmt.layout),
                             packing.Packer(8, fmt.layout), batch_size=1, seed=3)
  ids = []
  for b in itertools.islice(ds, 40):
    ids += [int(t) for t, s in zip(b["input_ids"][0, 0, ::4], b["segment_ids"][0]) if s > 0]
  from_a = sum(i < 32 for i in ids)  # shards[:2] hold records 0..31
  assert abs(from_a - 0.75 * len(ids)) <= 2 and len(ids) >= 200
  with pytest.raises(ValueError, match="num_epochs=None"):
    pipeline.make_dataset({"a": (shards, 1.0)}, _record_id, packing.Packer(8, fmt.layout),
                          batch_size=1, seed=0, num_epochs=1)
  make = pipeline.PhaseExamples(fmt, "generation", seed=0)
  record = {"text": "the quick fox", "codes": np.ones((12, 8), np.uint16), "task": "asr"}
  for index in range(6):
    ex = make(record, index)
    parsed = L.parse_sequence(ex["input_ids"], fmt.layout)
    assert [type(x).__name__ for x in parsed] == ["AudioSegment", "TextSegment"]
  assert make({**record, "task": "no_such_task"}, 0) == {"skip": "template_failed:no_such_task"}
  # Without a task, the phase mixture decides, exactly as templates.example_for does.
  record["task"] = ""
  for index in range(6):
    np.testing.assert_array_equal(make(record, index)["input_ids"], templates.example_for(
        fmt, templates.Utterance("the quick fox", record["codes"].astype(np.int32)),
        "generation", 0, index).ids_kl)


def test_two_processes_assemble_the_global_batch_of_their_shares(shards, fmt, tmp_path):
  """A real two-process jax.distributed run (2 fake devices each): every process sees the same
  global batches, made of host 0's rows then host 1's, each exactly what make_dataset gives that
  host alone."""
  fmt.tokenizer.save(str(tmp_path / "tok"))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.datapipe.multihost_worker", address, "2", str(i),
       os.path.dirname(shards[0]), str(tmp_path / "tok"), str(tmp_path / f"out{i}.npz")],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    outputs = [proc.communicate(timeout=240)[0] for proc in procs]
  finally:
    for proc in procs:
      proc.kill()
  for i, (proc, out) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
  hosts = [_take(iter(pipeline.make_dataset(
      shards, pipeline.PhaseExamples(fmt, w.PHASE, w.SEED), packing.Packer(w.SEQ_POSITIONS,
                                                                            fmt.layout),
      batch_size=w.GLOBAL_BATCH // 2, seed=w.SEED, process_index=h, process_count=2,
      pack_window_sequences=w.WINDOW)), w.N_BATCHES) for h in (0, 1)]
  for i in range(2):
    with np.load(tmp_path / f"out{i}.npz") as got:
      for j in range(w.N_BATCHES):
        for key in hosts[0][j]:
          np.testing.assert_array_equal(
              got[f"{j}/{key}"], np.concatenate([hosts[0][j][key], hosts[1][j][key]]))
