"""Pre-tokenisation: bad inputs skipped and reported, shard contents, hosts' shares, resuming after
a SIGKILL gives the bytes of an uninterrupted run."""

import functools
import io
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import soundfile
from array_record.python import array_record_module

from mimo_jax.codec import api
from mimo_jax.codec.checkpoint import import_codec
from mimo_jax.data import corpus, manifest, pretokenize
from mimo_jax.data.audio import AudioLimits, load_clip
from mimo_jax.data.tokenizer import TextTokenizer

SR = 24000
N_GOOD = 7
SETTINGS = pretokenize.Settings(records_per_shard=3, max_text_tokens=64,
                                limits=AudioLimits(min_seconds=0.5, max_seconds=8.0))
# Every kind of bad input, with the reason it must be counted under.
BAD = {"missing": "missing_file", "corrupt": "unreadable", "empty": "empty", "nan": "non_finite",
       "inf": "non_finite", "silent": "silent", "short": "too_short", "long": "too_long",
       "wordy": pretokenize.TEXT_TOO_LONG}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _tone(seconds, sr=SR):
  t = np.arange(int(seconds * sr)) / sr
  return (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, official_tiny_codec_dir):
  """A manifest of espeak-ng speech, one 16 kHz clip (resampled, kept), every bad kind and a
  malformed line, interleaved so that shards mix good and bad; the tokenizer and the codec."""
  root = tmp_path_factory.mktemp("pretok")
  good_manifest = corpus.build_corpus(str(root / "speech"), N_GOOD, seed=3, languages=("en",))
  good = [json.loads(line) for line in open(good_manifest)]
  for row in good:
    row["audio"] = os.path.join("speech", row["audio"])
  files = root / "bad"
  files.mkdir()
  nan, inf = _tone(1.0), _tone(1.0)
  nan[10], inf[20] = np.nan, -np.inf
  arrays = {"empty": np.zeros(0, np.float32), "nan": nan, "inf": inf,
            "silent": np.zeros(SR, np.float32), "short": _tone(0.2), "long": _tone(9.0),
            "wordy": _tone(1.0)}
  for name, wav in arrays.items():
    soundfile.write(files / f"{name}.wav", wav, SR, subtype="FLOAT")
  (files / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00 broken")
  soundfile.write(files / "rate16k.wav", _tone(1.5, 16000), 16000)
  bad = [{"audio": f"bad/{name}.wav", "text": "x" if name != "wordy" else "word " * 200}
         for name in BAD]
  rows = []
  for i in range(max(len(good), len(bad))):
    rows += good[i:i + 1] + bad[i:i + 1]
  rows.insert(5, {"audio": "bad/rate16k.wav", "text": "a tone at sixteen kilohertz"})
  path = root / "manifest.jsonl"
  manifest.write_manifest(rows, str(path))
  with open(path, "a") as f:
    f.write("{this line is broken\n")
  tokenizer = TextTokenizer.train([r["text"] for r in good] * 4, vocab_size=400)
  tokenizer.save(str(root / "tok"))
  params, cfg = import_codec(official_tiny_codec_dir)
  skips = manifest.Skips()
  records = manifest.read_manifest(str(path), skips)
  valid_keys = [r.key for r in records
                if not any(r.audio.endswith(f"bad/{name}.wav") for name in BAD)]
  return {"root": root, "manifest": str(path), "records": records, "skips": skips,
          "valid_keys": valid_keys, "tokenizer": tokenizer, "params": params, "cfg": cfg}


def _encode_text(setup):
  return functools.partial(setup["tokenizer"].encode, special=False)  # transcripts are data


def _run(setup, output, **kwargs):
  out = io.StringIO()
  report = pretokenize.run(setup["records"], setup["skips"], str(output), setup["params"],
                           setup["cfg"], setup["tokenizer"], SETTINGS, batch_size=4,
                           source=setup["manifest"], out=out, **kwargs)
  return report, out.getvalue()


def _read_shards(output):
  examples = []
  for path in pretokenize.shard_paths(str(output)):
    reader = array_record_module.ArrayRecordReader(path)
    examples += [pretokenize.deserialize(b) for b in reader.read_all()]
    reader.close()
  return examples


def _shard_bytes(output):
  names = sorted(n for n in os.listdir(output) if n.startswith("shard-"))
  return {n: (output / n).read_bytes() for n in names}


@pytest.fixture(scope="module")
def reference(setup):
  """One uninterrupted single-host run."""
  output = setup["root"] / "reference"
  report, printed = _run(setup, output)
  return output, report, printed


def test_bad_inputs_are_skipped_counted_and_reported(setup, reference):
  output, report, printed = reference
  expected = {manifest.MALFORMED_LINE: 1}
  for reason in BAD.values():
    expected[reason] = expected.get(reason, 0) + 1
  assert report["skips"]["counts"] == expected
  assert report["skipped"] == len(BAD) + 1
  assert report["written"] == N_GOOD + 1  # the 16 kHz clip is resampled and kept
  assert report["records"] == len(setup["records"]) + 1
  assert report["shards"] == -(-len(setup["records"]) // SETTINGS.records_per_shard)
  saved = json.loads((output / "report.json").read_text())
  assert saved == report
  for reason, count in expected.items():
    assert f"  {reason}: {count} (e.g. " in printed
  assert f"done: {N_GOOD + 1} of {len(setup['records']) + 1} records" in printed
  assert "files 17/17" in printed and "h/s), ETA" in printed
  # Nothing valid is dropped: exactly the valid records, in manifest order.
  examples = _read_shards(output)
  assert [e["key"] for e in examples] == setup["valid_keys"]


def test_shard_records_hold_the_codes_text_ids_and_metadata(setup, reference):
  output, _, _ = reference
  examples = {e["key"]: e for e in _read_shards(output)}
  by_key = {r.key: r for r in setup["records"]}
  for key in (setup["valid_keys"][0], next(k for k in setup["valid_keys"]
                                            if by_key[k].audio.endswith("rate16k.wav"))):
    record, example = by_key[key], examples[key]
    wav = load_clip(record.audio, setup["cfg"], SETTINGS.limits)
    codes = api.encode(setup["params"], setup["cfg"], wav, SR)
    assert example["codes"].dtype == np.uint16 and example["codes"].shape == codes.shape
    assert codes.shape[1] == 8 and abs(len(codes) - 25 * len(wav) / SR) <= 1
    np.testing.assert_array_equal(example["codes"], codes)
    assert example["text_ids"].dtype == np.int32
    np.testing.assert_array_equal(example["text_ids"], _encode_text(setup)(record.text))
    assert (example["audio"], example["text"], example["speaker"]) == (
        record.audio, record.text, record.speaker)
    assert example["seconds"] == len(wav) / SR


def test_hosts_take_disjoint_shares_that_make_the_single_host_run(setup, reference):
  output, report, _ = reference
  split = setup["root"] / "two_hosts"
  # One loading thread here, four in the reference: threads change nothing written.
  reports = [_run(setup, split, process_index=i, process_count=2, load_threads=1)[0]
             for i in (0, 1)]
  assert [r["shards"] for r in reports] == [-(-report["shards"] // 2), report["shards"] // 2]
  assert sum(r["written"] for r in reports) == report["written"]
  assert reports[1]["skips"]["counts"].get(manifest.MALFORMED_LINE) is None  # counted once
  assert os.path.exists(split / "report-process-00000.json")
  assert os.path.exists(split / "report-process-00001.json")
  assert _shard_bytes(split) == _shard_bytes(output)


def test_rerun_skips_finished_shards_and_other_settings_are_refused(setup, reference):
  output, report, _ = reference
  before = _shard_bytes(output)
  again, printed = _run(setup, output)
  assert f"owns {report['shards']}, {report['shards']} already finished" in printed
  assert _shard_bytes(output) == before
  assert {k: v for k, v in again.items() if k != "seconds_this_run"} == {
      k: v for k, v in report.items() if k != "seconds_this_run"}
  other = pretokenize.Settings(records_per_shard=4, max_text_tokens=64, limits=SETTINGS.limits)
  with pytest.raises(ValueError, match="records_per_shard"):
    pretokenize.run(setup["records"], setup["skips"], str(output), setup["params"], setup["cfg"],
                    setup["tokenizer"], other, source=setup["manifest"], out=io.StringIO())


def test_another_codec_or_tokenizer_is_refused_and_an_empty_source_is_an_error(setup, reference):
  output, _, _ = reference
  plan = pretokenize.read_plan(str(output))
  assert plan["codec"]["codebook_sizes"] == list(setup["cfg"].codebook_sizes)
  assert plan["codec_params_sha256"] == pretokenize.params_sha256(setup["params"])
  run = lambda params, tokenizer, records=setup["records"], out=output: pretokenize.run(
      records, setup["skips"], str(out), params, setup["cfg"], tokenizer, SETTINGS,
      source=setup["manifest"], out=io.StringIO())
  retrained = jax.tree.map(lambda x: x, setup["params"])
  retrained["encoder"]["conv1"]["bias"] = retrained["encoder"]["conv1"]["bias"] + 1e-3
  with pytest.raises(ValueError, match=r"\(codec_params_sha256 differ"):
    run(retrained, setup["tokenizer"])
  other_tokenizer = TextTokenizer.train(["completely different words"] * 4, vocab_size=300)
  with pytest.raises(ValueError, match=r"\(tokenizer_sha256 differ"):
    run(setup["params"], other_tokenizer)
  with pytest.raises(ValueError, match=r"no usable records \(2 skipped"):
    skips = manifest.Skips()
    skips.add("missing_file", "a", "a: missing")
    skips.add("missing_file", "b", "b: missing")
    pretokenize.run([], skips, str(setup["root"] / "empty"), setup["params"], setup["cfg"],
                    setup["tokenizer"], SETTINGS, source="empty.jsonl", out=io.StringIO())
  assert not (setup["root"] / "empty").exists()


def _cli(setup, output):
  return [sys.executable, "-m", "mimo_jax.pretokenize", f"--manifest={setup['manifest']}",
          f"--codec_ckpt={os.path.join(ROOT, 'tests/data/official_tiny_a/tokenizer')}",
          f"--output={output}", f"--tokenizer={setup['root'] / 'tok'}",
          f"--records_per_shard={SETTINGS.records_per_shard}", "--batch_size=4",
          f"--max_text_tokens={SETTINGS.max_text_tokens}", "--min_seconds=0.5",
          "--max_seconds=8.0", "--progress_interval=0"]


def test_killed_run_resumes_to_the_bytes_of_an_uninterrupted_run(setup, reference):
  output, report, _ = reference
  killed = setup["root"] / "killed"
  # The resumed run reuses the killed run's compilations through JAX's persistent cache.
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": str(setup["root"] / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  first_shard = killed / pretokenize.shard_name(0, report["shards"])
  proc = subprocess.Popen(_cli(setup, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 120
  while not first_shard.exists() and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert first_shard.exists(), "the run ended before its first shard was written"
  done = [n for n in os.listdir(killed) if n.endswith(pretokenize.SHARD_SUFFIX)]
  assert 0 < len(done) < report["shards"], done  # killed midway
  assert not (killed / "report.json").exists()
  # A partial shard as a kill mid-write leaves it: garbage under the .partial name.
  last = killed / (pretokenize.shard_name(report["shards"] - 1, report["shards"]) + ".partial")
  last.write_bytes(b"half a shard")
  result = subprocess.run(_cli(setup, killed), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"{len(done)} already finished" in result.stdout
  assert _shard_bytes(killed) == _shard_bytes(output)
  resumed = json.loads((killed / "report.json").read_text())
  assert resumed["skips"] == report["skips"] and resumed["written"] == report["written"]
  assert not any(n.endswith(".partial") for n in os.listdir(killed))


def test_a_failing_encode_skips_only_its_clip(setup, monkeypatch):
  records = [r for r in setup["records"] if r.key in setup["valid_keys"]][:3]
  fail_len = len(load_clip(records[1].audio, setup["cfg"], SETTINGS.limits))

  def encode_batch(*args, **kwargs):
    raise RuntimeError("batched call failed")

  def encode(params, cfg, wav, sr, n_q):
    if len(wav) == fail_len:
      raise RuntimeError("this clip failed")
    return np.zeros((len(wav) // 960, n_q), np.int32)

  monkeypatch.setattr(api, "encode_batch", encode_batch)
  monkeypatch.setattr(api, "encode", encode)
  shard = pretokenize.tokenize_shard(records, None, setup["cfg"], _encode_text(setup), SETTINGS,
                                     batch_size=4)
  assert [pretokenize.deserialize(e)["key"] for e in shard.examples] == [records[0].key,
                                                                         records[2].key]
  skips = shard.skips
  assert skips.counts == {pretokenize.ENCODE_FAILED: 1}
  assert "this clip failed" in skips.examples[pretokenize.ENCODE_FAILED][0]["message"]


def test_conversations_and_captions_are_pretokenised(setup, tmp_path):
  """A conversation's audio parts become their clips' codes in place; a caption is kept and
  counted (what training reads to drop captioning when the data has none); a conversation with a
  missing clip is skipped under that reason, naming its line."""
  good = [r for r in setup["records"] if r.key in setup["valid_keys"]][:2]
  sft = tmp_path / "sft.jsonl"
  manifest.write_manifest([
      {"audio": good[0].audio, "text": good[0].text, "caption": "A voice reads a sentence."},
      {"audio": good[1].audio, "text": good[1].text},
      {"task": "spoken_dialogue_sft", "messages": [
          {"role": "user", "content": [{"audio": good[0].audio}]},
          {"role": "assistant", "content": [{"text": good[1].text, "audio": good[1].audio}]}]},
      {"messages": [{"role": "user", "content": [{"audio": "gone.wav"}]},
                    {"role": "assistant", "content": "x"}]}], str(sft))
  skips = manifest.Skips()
  records = manifest.read_manifest(str(sft), skips)
  report = pretokenize.run(records, skips, str(tmp_path / "out"), setup["params"], setup["cfg"],
                           setup["tokenizer"], SETTINGS, batch_size=4, out=io.StringIO())
  assert report["written"] == 3 and report["captions"] == 1
  assert report["skips"]["counts"] == {"missing_file": 1}
  assert report["skips"]["examples"]["missing_file"][0]["item"] == "sft.jsonl:4"
  paths = pretokenize.shard_paths(str(tmp_path / "out"))
  assert pretokenize.caption_count(paths) == (1, 3)
  first, second, chat = _read_shards(tmp_path / "out")
  assert (first["caption"], second["caption"]) == ("A voice reads a sentence.", "")
  assert chat["task"] == "spoken_dialogue_sft" and chat["codes"].shape == (0, 8)
  user, reply = chat["messages"]
  assert (user["role"], reply["role"], reply["thinking"]) == ("user", "assistant", False)
  np.testing.assert_array_equal(user["parts"][0]["codes"], first["codes"])
  assert reply["parts"][0]["text"] == good[1].text
  np.testing.assert_array_equal(reply["parts"][0]["codes"], second["codes"])
  assert chat["seconds"] == pytest.approx(first["seconds"] + second["seconds"])
