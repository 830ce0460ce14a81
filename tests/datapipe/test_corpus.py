"""The espeak-ng corpus: manifest fields and audio, byte determinism per seed, the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from mimo_jax import corpus as corpus_cli
from mimo_jax.data import corpus
from mimo_jax.data import manifest as manifest_lib

N = 8


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = tmp_path_factory.mktemp("corpus")
  return str(out), corpus.build_corpus(str(out), N, seed=3)


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_manifest_lines_describe_their_audio(built):
  out, manifest = built
  assert manifest == os.path.join(out, corpus.MANIFEST)
  lines = _lines(manifest)
  assert len(lines) == N
  voices = {v.speaker: v for v in corpus.VOICES}
  sentences = {(lang, s) for lang, s in corpus.load_sentences()}
  for i, line in enumerate(lines):
    assert set(line) == {"audio", "text", "speaker", "language", "duration"}
    assert line["audio"] == f"wavs/utt_{i:05d}.wav"
    assert (line["language"], line["text"]) in sentences
    assert voices[line["speaker"]].language == line["language"]
    wav, sr = soundfile.read(os.path.join(out, line["audio"]))
    assert sr == corpus.SAMPLE_RATE and wav.ndim == 1
    assert line["duration"] == round(len(wav) / sr, 4)
    # Speech, not silence: a sentence lasts over a second and has a real level.
    assert line["duration"] > 1.0 and np.sqrt(np.mean(wav**2)) > 0.01
  assert sorted(os.listdir(os.path.join(out, "wavs"))) == [f"utt_{i:05d}.wav" for i in range(N)]


def test_manifest_reads_back_with_the_sources(built):
  """The pipeline's manifest reader takes every line, paths resolved beside the manifest."""
  out, manifest = built
  skips = manifest_lib.Skips()
  records = manifest_lib.read_manifest(manifest, skips)
  assert skips.total == 0 and len(records) == N
  for record, line in zip(records, _lines(manifest)):
    assert record.audio == os.path.join(out, line["audio"])
    assert (record.text, record.speaker, record.language) == (line["text"], line["speaker"],
                                                              line["language"])


def test_same_seed_same_bytes_other_seed_other_corpus(built, tmp_path):
  out, manifest = built
  again = corpus.build_corpus(str(tmp_path / "a"), N, seed=3)
  with open(manifest, "rb") as f, open(again, "rb") as g:
    assert f.read() == g.read()
  for line in _lines(manifest):
    with open(os.path.join(out, line["audio"]), "rb") as f, \
        open(os.path.join(tmp_path, "a", line["audio"]), "rb") as g:
      assert f.read() == g.read()
  other = _lines(corpus.build_corpus(str(tmp_path / "b"), N, seed=4))
  assert [(x["text"], x["speaker"]) for x in other] != [(x["text"], x["speaker"])
                                                        for x in _lines(manifest)]


def test_several_voices_and_both_languages(tmp_path):
  lines = _lines(corpus.build_corpus(str(tmp_path), 24, seed=0))
  assert {x["language"] for x in lines} == {"en", "zh"}
  assert len({x["speaker"] for x in lines}) >= 4
  assert {x["language"] for x in _lines(corpus.build_corpus(str(tmp_path / "en"), 4, seed=0,
                                                            languages=("en",)))} == {"en"}


def test_a_sentence_list_and_chosen_speakers(tmp_path):
  """What the learn recipe does to hold sentences and voices out: its own list, some voices."""
  sentences = tmp_path / "s.txt"
  sentences.write_text("en\tThe red boat left at dawn.\nen\tAnna closed the door.\n")
  lines = _lines(corpus.build_corpus(str(tmp_path / "c"), 6, languages=("en",),
                                     sentences_path=str(sentences),
                                     speakers=("en_us_f2", "en_ca_m4")))
  assert {x["speaker"] for x in lines} <= {"en_us_f2", "en_ca_m4"}
  assert {x["text"] for x in lines} <= {"The red boat left at dawn.", "Anna closed the door."}
  with pytest.raises(corpus.CorpusError, match="unknown speakers \\['nobody'\\]"):
    corpus.build_corpus(str(tmp_path / "d"), 2, speakers=("nobody",))


def test_bad_inputs_are_named(tmp_path):
  with pytest.raises(corpus.CorpusError, match="language 'fr'"):
    corpus.build_corpus(str(tmp_path), 2, languages=("fr",))
  with pytest.raises(corpus.CorpusError, match="num_utterances must be >= 1"):
    corpus.build_corpus(str(tmp_path), 0)
  bad = tmp_path / "s.txt"
  bad.write_text("# comment\nen\tfine sentence\nno tab here\n")
  with pytest.raises(corpus.CorpusError, match=f"{bad}:3: expected"):
    corpus.load_sentences(str(bad))


def test_cli(tmp_path):
  ok = subprocess.run([sys.executable, "-m", "mimo_jax.corpus", f"--output={tmp_path}",
                       "--num_utterances=2", "--languages=en"], capture_output=True, text=True,
                      check=False)
  assert ok.returncode == 0, ok.stderr
  assert "2 utterances" in ok.stdout and len(_lines(tmp_path / corpus.MANIFEST)) == 2
  assert "files 2/2" in ok.stdout and "ETA" in ok.stdout  # the progress line of the last file



def test_cli_error_exits_1(tmp_path, capsys):
  # In-process: one interpreter start is enough.
  assert corpus_cli.run(str(tmp_path), 2, 0, ("xx",)) == 1
  assert "error: language 'xx'" in capsys.readouterr().err
