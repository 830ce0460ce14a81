"""Sources (JSONL manifests, LibriSpeech / LibriTTS folders) and the audio checks' skip reasons."""

import json
import os
import re

import numpy as np
import pytest
import soundfile

from mimo_jax.codec.api import AudioError
from mimo_jax.codec.config import load_codec_config
from mimo_jax.data import audio, manifest

SR = 24000


@pytest.fixture(scope="module")
def codec_cfg(official_tiny_codec_dir):
  return load_codec_config(os.path.join(official_tiny_codec_dir, "config.json"))


def _tone(seconds: float, sr: int = SR) -> np.ndarray:
  t = np.arange(int(seconds * sr)) / sr
  return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_manifest_lines_parse_and_malformed_lines_are_counted(tmp_path):
  lines = [
      json.dumps({"audio": "a.wav", "text": "  Hello \t world ", "speaker": "s1",
                  "language": "en", "task": "asr", "duration": 1.5}),
      "",  # blank: not a record, not a skip
      json.dumps({"audio": "/abs/b.flac"}),
      "{not json",
      json.dumps(["audio", "a.wav"]),
      json.dumps({"text": "no audio"}),
      json.dumps({"audio": "c.wav", "text": 7}),
      json.dumps({"audio": "c.wav", "duration": -1}),
      json.dumps({"audio": "c.wav", "speaker": 3}),
      json.dumps({"audio": "gs://bucket/d.wav", "text": "e\u0301t\u00e9"}),
  ]
  path = tmp_path / "m.jsonl"
  path.write_text("\n".join(lines) + "\n")
  skips = manifest.Skips()
  records = manifest.read_manifest(str(path), skips)
  assert [r.key for r in records] == ["m.jsonl:1", "m.jsonl:3", "m.jsonl:10"]
  assert records[0] == manifest.Record(key="m.jsonl:1", audio=str(tmp_path / "a.wav"),
                                       text="Hello world", speaker="s1", language="en",
                                       task="asr", duration=1.5)
  assert records[1].audio == "/abs/b.flac" and records[1].text == ""
  assert records[2].audio == "gs://bucket/d.wav" and records[2].text == "\u00e9t\u00e9"  # NFC
  assert skips.counts == {manifest.MALFORMED_LINE: 6}
  assert [e["item"] for e in skips.examples[manifest.MALFORMED_LINE]] == [
      f"m.jsonl:{n}" for n in (4, 5, 6, 7, 8, 9)]
  messages = " | ".join(e["message"] for e in skips.examples[manifest.MALFORMED_LINE])
  for expected in ("not JSON", "expected a JSON object", "'audio' must be", "'text' must be",
                   "'duration' must be", "'speaker' must be"):
    assert expected in messages
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    manifest.read_manifest(str(tmp_path / "missing.jsonl"), skips)


def test_captions_and_sft_conversations_parse(tmp_path):
  """An utterance's caption; a conversation's turns, parts (text, audio, spoken reply), thinking
  and audio paths (relative to the manifest), its task defaulting to `chat`."""
  chat = {"task": "spoken_dialogue_sft", "messages": [
      {"role": "system", "content": [{"text": "Your voice should be:"}, {"audio": "v.wav"}]},
      {"role": "user", "content": [{"audio": "/abs/q.wav"}, {"text": "and?\n\n"}]},
      {"role": "assistant", "content": [{"text": "Sure.", "audio": "a.wav"}]},
      {"role": "user", "content": "why"},
      {"role": "assistant", "content": "because</think>\nso", "thinking": True}]}
  path = tmp_path / "sft.jsonl"
  manifest.write_manifest([{"audio": "x.wav", "caption": " A dog  barks. "}, chat,
                           {"messages": [{"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": "hello"}]}], str(path))
  skips = manifest.Skips()
  utterance, dialogue, plain = manifest.read_manifest(str(path), skips)
  assert skips.total == 0 and utterance.caption == "A dog barks." and not utterance.messages
  assert utterance.audio_paths == [str(tmp_path / "x.wav")]
  M, P = manifest.Message, manifest.Part
  assert dialogue.task == "spoken_dialogue_sft" and dialogue.audio == ""
  assert dialogue.messages == (
      M("system", (P(text="Your voice should be:"), P(audio=str(tmp_path / "v.wav")))),
      M("user", (P(audio="/abs/q.wav"), P(text="and?\n\n"))),
      M("assistant", (P(text="Sure.", audio=str(tmp_path / "a.wav")),)),
      M("user", (P(text="why"),)), M("assistant", (P(text="because</think>\nso"),), True))
  assert dialogue.audio_paths == [str(tmp_path / n) for n in ("v.wav",)] + ["/abs/q.wav",
                                                                          str(tmp_path / "a.wav")]
  assert plain.task == "chat" and plain.audio_paths == []
  # Readers of single clips keep the utterance and count each conversation.
  assert manifest.utterances([utterance, dialogue, plain], skips) == [utterance]
  assert skips.counts == {manifest.CONVERSATION: 2}
  assert [e["item"] for e in skips.examples[manifest.CONVERSATION]] == [dialogue.key, plain.key]


@pytest.mark.parametrize("line, message", [
    ({"task": "karaoke", "messages": []}, "'task' must be one of"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "the last message must be the assistant"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "message 0: 'role' must be system"),
    ({"messages": [{"role": "assistant", "content": []}]}, "'content' must be a string or"),
    ({"messages": [{"role": "assistant", "content": [{"audio": ""}]}]},
     "message 0 part 0: 'audio' must be a non-empty string"),
    ({"messages": [{"role": "assistant", "content": [{"video": "x.mp4"}]}]},
     "message 0 part 0: a part must be"),
    ({"messages": [{"role": "user", "content": [{"text": "hi", "audio": "a.wav"}]},
                   {"role": "assistant", "content": "x"}]},
     "message 0 part 0: a spoken reply .* belongs to an assistant turn"),
    ({"messages": [{"role": "user", "content": "x", "thinking": True},
                   {"role": "assistant", "content": "x"}]}, "only an assistant turn thinks"),
    ({"messages": [{"role": "assistant", "content": "x"}], "extra": 1}, "unknown fields"),
])
def test_malformed_conversations_are_skipped_naming_file_line_and_reason(tmp_path, line, message):
  path = tmp_path / "sft.jsonl"
  manifest.write_manifest([{"messages": [{"role": "assistant", "content": "ok"}]}, line],
                          str(path))
  skips = manifest.Skips()
  assert len(manifest.read_manifest(str(path), skips)) == 1
  assert skips.counts == {manifest.MALFORMED_LINE: 1}
  got = skips.examples[manifest.MALFORMED_LINE][0]
  assert got["item"] == "sft.jsonl:2"
  assert re.search(f"^sft.jsonl:2: .*{message}", got["message"]), got["message"]


def test_manifest_round_trip_and_skips_merge(tmp_path):
  rows = [{"audio": f"w/{i}.wav", "text": f"utterance {i}", "speaker": "x"} for i in range(3)]
  manifest.write_manifest(rows, str(tmp_path / "m.jsonl"))
  records = manifest.read_source(str(tmp_path / "m.jsonl"), manifest.Skips())
  assert [(r.audio, r.text, r.speaker) for r in records] == [
      (str(tmp_path / r["audio"]), r["text"], "x") for r in rows]
  a, b = manifest.Skips(), manifest.Skips()
  a.add("x", "1", "first")
  b.add("x", "2", "second")
  b.add("y", "3", "third")
  a.merge(b.to_json())
  assert a.counts == {"x": 2, "y": 1} and a.total == 3
  assert a.to_json()["examples"]["x"] == [{"item": "1", "message": "first"},
                                          {"item": "2", "message": "second"}]


def test_librispeech_and_libritts_folders(tmp_path):
  chapter = tmp_path / "103" / "1240"
  chapter.mkdir(parents=True)
  for utt in ("103-1240-0000", "103-1240-0001"):
    soundfile.write(chapter / f"{utt}.flac", _tone(0.6), 16000)
  (chapter / "103-1240-0000.trans.txt").write_text(
      "103-1240-0001 SECOND  LINE\n103-1240-0000 FIRST LINE\n103-1240-0002\n")
  tts = tmp_path / "tts" / "19" / "198"
  tts.mkdir(parents=True)
  soundfile.write(tts / "19_198_000000_000000.wav", _tone(0.6), SR)
  (tts / "19_198_000000_000000.normalized.txt").write_text("Normalised text.\n")
  skips = manifest.Skips()
  records = manifest.read_source(str(tmp_path), skips)
  assert [(r.key, r.text, r.speaker, os.path.basename(r.audio)) for r in records] == [
      ("103-1240-0000", "FIRST LINE", "103", "103-1240-0000.flac"),
      ("103-1240-0001", "SECOND LINE", "103", "103-1240-0001.flac"),
      ("19_198_000000_000000", "Normalised text.", "19", "19_198_000000_000000.wav")]
  assert skips.counts == {manifest.MALFORMED_LINE: 1}
  assert "no transcript" in skips.examples[manifest.MALFORMED_LINE][0]["message"]


def _write(path, wav, sr=SR, subtype="FLOAT"):
  soundfile.write(path, wav, sr, subtype=subtype)
  return str(path)


def test_every_bad_clip_kind_is_refused_with_its_reason(tmp_path, codec_cfg):
  limits = audio.AudioLimits(min_seconds=0.5, max_seconds=2.0)
  nan = _tone(1.0)
  nan[100] = np.nan
  inf = _tone(1.0)
  inf[5] = np.inf
  corrupt = tmp_path / "corrupt.wav"
  corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
  cases = {
      "missing_file": str(tmp_path / "nope.wav"),
      "unreadable": str(corrupt),
      "empty": _write(tmp_path / "empty.wav", np.zeros(0, np.float32)),
      "non_finite": _write(tmp_path / "nan.wav", nan),
      "silent": _write(tmp_path / "silent.wav", np.zeros(SR, np.float32)),
      "too_short": _write(tmp_path / "short.wav", _tone(0.3)),
      "too_long": _write(tmp_path / "long.wav", _tone(2.5), subtype="PCM_16"),
  }
  for reason, path in cases.items():
    with pytest.raises(AudioError) as info:
      audio.load_clip(path, codec_cfg, limits)
    assert info.value.reason == reason, (reason, str(info.value))
    assert os.path.basename(path) in str(info.value)
  with pytest.raises(AudioError) as info:
    audio.load_clip(_write(tmp_path / "inf.wav", inf), codec_cfg, limits)
  assert info.value.reason == "non_finite"
  # Without a header length (remote files), the decoded length decides.
  with pytest.raises(AudioError) as info:
    audio.check_clip(_tone(2.5), SR, codec_cfg, limits, "remote.wav")
  assert info.value.reason == "too_long"
  # Below the codec's own minimum (481 samples) is "too_short" too, whatever the limits.
  with pytest.raises(AudioError) as info:
    audio.check_clip(_tone(0.01), SR, codec_cfg, audio.AudioLimits(min_seconds=0.0), "tiny")
  assert info.value.reason == "too_short"


def test_valid_clips_are_repaired_not_refused(tmp_path, codec_cfg):
  limits = audio.AudioLimits(min_seconds=0.5, max_seconds=2.0)
  wav_16k = _write(tmp_path / "16k.wav", _tone(1.0, 16000), sr=16000)
  out = audio.load_clip(wav_16k, codec_cfg, limits)
  assert out.dtype == np.float32 and out.shape == (SR,)  # resampled to 24 kHz
  stereo = np.stack([_tone(1.0), 0.5 * _tone(1.0)], axis=1)
  out = audio.load_clip(_write(tmp_path / "stereo.wav", stereo), codec_cfg, limits)
  np.testing.assert_allclose(out, 0.75 * _tone(1.0), atol=1e-6)
  quiet = 1e-3 * _tone(1.0)  # -60 dBFS speech-level quiet is not silence
  assert len(audio.load_clip(_write(tmp_path / "quiet.wav", quiet), codec_cfg, limits)) == SR
  with pytest.raises(ValueError, match="min_seconds < max_seconds"):
    audio.AudioLimits(min_seconds=3, max_seconds=2)
