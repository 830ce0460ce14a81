"""`python -m mimo_jax.evaluate` end to end: a killed run resumes without recomputing finished
items, and a full run on a training run directory of the tiny model writes its tables."""

import dataclasses
import json
import os

import numpy as np
import pytest
from absl import flags

from mimo_jax import evaluate, inference
from mimo_jax.codec import config as codec_config
from mimo_jax.data import corpus, manifest
from mimo_jax.eval import store, tasks
from mimo_jax.lm import sampling
from mimo_jax.train.checkpoint import Checkpointer
from tests.helpers import speaking_params


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  """A manifest of 3 English espeak-ng utterances (24 kHz)."""
  folder = tmp_path_factory.mktemp("corpus")
  return corpus.build_corpus(str(folder), 3, seed=0, languages=("en",))


class Killed(Exception):
  """Stands for the process dying between two batches."""


class EchoASR:
  """ASR stand-in: answers each clip's manifest transcript (looked up by its length) and counts
  the clips it was asked about; raises `Killed` when asked for batch number `die_at`."""

  def __init__(self, transcripts: dict[int, str], die_at: int | None = None):
    self.transcripts, self.die_at, self.heard = transcripts, die_at, []

  def asr(self, wavs):
    if self.die_at is not None and len(self.heard) // 2 + 1 == self.die_at:
      raise Killed
    if any(len(w) not in self.transcripts for w in wavs):
      raise ValueError("a clip this model refuses")
    self.heard.extend(len(w) for w in wavs)
    return [self.transcripts[len(w)] for w in wavs]


def test_a_killed_evaluation_resumes_without_recomputing(tmp_path):
  """6 items in batches of 2: the first run dies asking for its second batch, after a torn half
  line was left at the end of the results file (a kill inside a write). The rerun cuts the torn
  line, asks the model only for the 4 unfinished items, and the report counts all 6 once."""
  folder = tmp_path / "data"
  manifest = corpus.build_corpus(str(folder), 6, seed=1, languages=("en",))
  data = {"asr": evaluate.read_task("asr", manifest, None, n_shots=0)}
  items = data["asr"].items
  codec = (None, codec_config.tiny())
  options = {"closed_judge": False, "dnsmos": False}
  ctx = tasks.Context(None, None, None, str(tmp_path), codec)
  lengths = [len(tasks.load_wav(ctx, it["audio"])) for it in items]
  assert len(set(lengths)) == 6, "the stand-in tells clips apart by length"
  transcripts = dict(zip(lengths, (it["text"] for it in items)))

  first = EchoASR(transcripts, die_at=2)
  with pytest.raises(Killed):
    evaluate.evaluate_checkpoint("run", first, codec, data, str(tmp_path / "out"), batch_size=2,
                                 options=options)
  results = store.host_file(str(tmp_path / "out" / "run" / "asr"), 0, 1)
  assert [r["id"] for r in store.read_rows(results)] == [it["id"] for it in items[:2]]
  with open(results, "a") as f:
    f.write('{"id": "torn", "hyp": "half a li')

  second = EchoASR(transcripts)
  summary = evaluate.evaluate_checkpoint("run", second, codec, data, str(tmp_path / "out"),
                                         batch_size=2, options=options)
  assert second.heard == lengths[2:]
  rows = store.read_rows(results)
  assert [r["id"] for r in rows] == [it["id"] for it in items]
  figures = summary["tasks"]["asr"]
  assert figures["n_scored"] == 6 and figures["wer"]["macro"] == 0.0
  assert figures["wer"]["n"] == 6


def test_a_request_the_model_refuses_is_skipped_with_its_reason(tmp_path, clips):
  """The model refuses one clip of a batch of three (a ValueError, as generation raises for a
  prompt beyond its limits): that item is counted as skipped with the model's message, the other
  two are still scored."""
  data = {"asr": evaluate.read_task("asr", clips, None, n_shots=0)}
  items, codec = data["asr"].items, (None, codec_config.tiny())
  ctx = tasks.Context(None, None, None, str(tmp_path), codec)
  lengths = [len(tasks.load_wav(ctx, it["audio"])) for it in items]
  model = EchoASR({n: it["text"] for n, it in zip(lengths[1:], items[1:])})
  summary = evaluate.evaluate_checkpoint("run", model, codec, data, str(tmp_path / "out"),
                                         batch_size=3, options={"dnsmos": False})
  assert sorted(model.heard) == sorted(lengths[1:])
  figures, skipped = summary["tasks"]["asr"], summary["skipped"]["asr"]
  assert figures["n_scored"] == 2 and figures["n_skipped"] == 1 and figures["wer"]["macro"] == 0
  assert skipped["counts"] == {tasks.GENERATION_REFUSED: 1}
  assert "a clip this model refuses" in json.dumps(skipped)


class CountingJudge:
  """Open-set judge stand-in: hears "the same words" in anything and counts the clips it heard."""

  mode = "open"

  def __init__(self):
    self.heard = []

  def transcribe(self, wav, sr):
    self.heard.append(len(wav))
    return "the same words"


class RecordingTTS:
  """Model stand-in: speaks a second of noise for every text and keeps the generation options."""

  def __init__(self):
    self.options = []

  def tts(self, texts, **generate_kwargs):
    self.options.append(generate_kwargs)
    return [np.random.RandomState(0).uniform(-0.1, 0.1, 24000).astype(np.float32) for _ in texts]


@pytest.mark.parametrize("temperature, audio_sampler", [
    (None, None), (0.0, sampling.GREEDY), (0.5, sampling.SamplerConfig(temperature=0.5))])
def test_tts_audio_temperature_reaches_the_generation(tmp_path, clips, temperature,
                                                      audio_sampler):
  """--tts_audio_temperature replaces the TTS preset's audio sampler (0: greedy); unset, the
  generation gets no sampler and keeps the official preset."""
  data = {"tts": evaluate.read_task("tts", clips, None, n_shots=0)}
  model = RecordingTTS()
  evaluate.evaluate_checkpoint(
      "run", model, (None, codec_config.tiny()), data, str(tmp_path / "out"),
      options={"dnsmos": False, "stream_text": "given", "self_asr": False,
               "tts_audio_temperature": temperature}, open_judge=CountingJudge())
  assert model.options and all(o.get("audio_sampler") == audio_sampler for o in model.options)
  assert all(o["stream_text"] == "given" for o in model.options)


def test_each_reference_clip_is_judged_once_per_evaluation(tmp_path, clips):
  """Two checkpoints evaluated with one `Judged` (as `evaluate.run` does): the judge hears each
  reference clip once and both reports carry its answers; a new evaluation judges them again."""
  data = {"asr": evaluate.read_task("asr", clips, None, n_shots=0)}
  items, codec = data["asr"].items, (None, codec_config.tiny())
  ctx = tasks.Context(None, None, None, str(tmp_path), codec)
  lengths = [len(tasks.load_wav(ctx, it["audio"])) for it in items]
  transcripts = {n: it["text"] for n, it in zip(lengths, items)}
  judge, judged = CountingJudge(), tasks.Judged()
  summaries = [evaluate.evaluate_checkpoint(name, EchoASR(transcripts), codec, data,
                                            str(tmp_path / "out"), options={"dnsmos": False},
                                            open_judge=judge, judged=judged)
               for name in ("first", "second")]
  assert sorted(judge.heard) == sorted(lengths)
  figures = [s["tasks"]["asr"]["ref_open_wer"] for s in summaries]
  assert figures[0] == figures[1] and figures[0]["n"] == 3 and figures[0]["macro"] > 0
  evaluate.evaluate_checkpoint("third", EchoASR(transcripts), codec, data, str(tmp_path / "out"),
                               options={"dnsmos": False}, open_judge=judge)
  assert sorted(judge.heard) == sorted(lengths * 2)


def test_closed_judges_are_shared_by_sentence_set():
  judged = tasks.Judged()
  first = judged.closed_judge(["the cat sat", "a dog ran"])
  assert judged.closed_judge(["a dog ran", "the cat sat"]) is first
  assert judged.closed_judge(["the cat sat"]) is not first


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, official_tiny_lm_dir, official_tiny_codec_dir):
  """A training run directory of the tiny model (`run.json` + Orbax `checkpoints/<step>/params`,
  what `mimo_jax.train` writes), holding the official tiny fixture's random weights steered to
  answer with audio (`helpers.speaking_params`), so that its TTS always speaks."""
  mimo = inference.MimoAudio.load(official_tiny_lm_dir, official_tiny_codec_dir, dtype="float32")
  run = tmp_path_factory.mktemp("runs") / "tiny_run"
  with Checkpointer(str(run / "checkpoints"), async_save=False) as ckpt:
    ckpt.save(3, {"params": speaking_params(mimo, mimo.tokens.empty)}, force=True)
  (run / "run.json").write_text(json.dumps({"model": dataclasses.asdict(mimo.cfg)}))
  return str(run)


def test_full_evaluate_run_writes_its_table(run_dir, clips, official_tiny_lm_dir,
                                            official_tiny_codec_dir, tmp_path):
  """The command as the demo runs it (ASR, TTS and codec over one manifest, Base prompts, the
  stream's text given, both judges): every item scored, the summary's documented keys filled,
  the Markdown table and histograms written. The random tiny model's scores mean nothing; the
  judges' figures on the reference audio are real."""
  fv = flags.FlagValues()
  evaluate.define_flags(fv)
  out = tmp_path / "eval"
  fv(["evaluate", f"--ckpt={run_dir}", f"--codec_ckpt={official_tiny_codec_dir}",
      f"--tokenizer={official_tiny_lm_dir}", "--tasks=asr,tts,codec", f"--data=asr={clips}",
      f"--data=tts={clips}", f"--data=codec={clips}", f"--output={out}",
      "--prompt_format=pretrain", "--stream_text=given", "--closed_judge", "--max_new=40",
      "--batch_size=4", "--nodnsmos"])  # DNSMOS: 3 s a clip on a busy machine; test_judges
  assert evaluate.run(fv) == 0
  folder = out / "tiny_run"
  summary = json.loads((folder / "summary.json").read_text())
  assert summary["settings"]["stream_text"] == "given"
  assert summary["settings"]["closed_set_sizes"] == {"asr": 3, "tts": 3, "codec": 3}
  asr, tts, codec = (summary["tasks"][t] for t in ("asr", "tts", "codec"))
  for figures in (asr, tts, codec):
    assert figures["n_items"] == figures["n_scored"] == 3 and figures["n_skipped"] == 0
  assert 0 <= asr["wer"]["macro"] and asr["wer"]["n"] == 3 and asr["wer"]["unit"] == "word"
  assert asr["ref_closed_wer"]["n"] == 3 and asr["ref_open_wer"]["n"] == 3
  # The steered model speaks every item (its text given), so every judge hears audio.
  assert tts["no_audio"] == 0 and tts["duration_ratio"]["n"] == 3
  assert tts["duration_ratio"]["mean"] > 0 and tts["seconds"]["mean"] > 0
  for key in ("open_wer", "closed_wer", "ref_open_wer", "ref_closed_wer", "self_asr_wer"):
    assert tts[key]["n"] == 3 and tts[key]["macro"] is not None, key
  assert 0 <= tts["closed_accuracy"] <= 1 and tts["ref_closed_accuracy"] == 1.0
  assert tts["dnsmos_ovrl"] == {"mean": None, "n": 0}  # --nodnsmos: the key stays, empty
  for key in ("pesq_nb", "pesq_wb", "stoi", "kbps"):
    assert codec[key]["n"] == 3, key
  assert "mean" in codec["sim"]  # NaN (no voiced speech) from the random tiny codec: n counts
  # The judges hear the reconstruction (the bound on any TTS through this codec) and the original.
  for key in ("open_wer", "closed_wer", "ref_open_wer", "ref_closed_wer"):
    assert codec[key]["n"] == 3 and codec[key]["macro"] is not None, key
  assert 0 <= codec["closed_accuracy"] <= 1 and codec["ref_closed_accuracy"] == 1.0
  rows = store.read_rows(store.host_file(str(folder / "tts"), 0, 1))
  assert all(os.path.getsize(r["audio"]) > 44 for r in rows)
  assert all(r["duration_ratio"] == pytest.approx(r["seconds"] / r["ref_seconds"]) for r in rows)
  # SIM is NaN where resemblyzer finds no voiced speech (this random model's sound), and the
  # summary's mean is over the finite ones only.
  assert all("sim" in r for r in rows)
  assert tts["sim"]["n"] == sum(np.isfinite(r["sim"]) for r in rows)
  table = (folder / "report.md").read_text()
  for line in ("| tts | closed_accuracy |", "| tts | duration_ratio.mean |",
               "| asr | wer.macro |", "| codec | pesq_wb.mean |"):
    assert line in table, line
  assert (folder / "tts" / "hist_open_wer.png").exists()


def test_a_conversation_line_is_counted_where_clips_are_read(tmp_path):
  """ASR and TTS items come from utterances; an SFT conversation in their manifest is counted
  by reason, not read as a clip without audio."""
  path = tmp_path / "mixed.jsonl"
  manifest.write_manifest([{"audio": "a.wav", "text": "one"}, {"audio": "b.wav", "text": "two"},
                           {"messages": [{"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": "hello"}]}], str(path))
  for task in ("asr", "tts"):
    data = evaluate.read_task(task, str(path), None, 0)
    assert [item["text"] for item in data.items] == ["one", "two"]
    assert data.skips.counts == {manifest.CONVERSATION: 1}
