"""The sequence layout against the official builders' outputs, and build -> parse round trips."""

import json
import os

import numpy as np
import pytest
import tokenizers

from mimo_jax import config
from mimo_jax.lm import layout
from mimo_jax.lm.layout import (AudioSegment, Layout, LayoutError, SpecialTokens, StreamSegment,
                                TextSegment)


@pytest.fixture(scope="module")
def tok(official_tiny_lm_dir):
  return tokenizers.Tokenizer.from_file(os.path.join(official_tiny_lm_dir, "tokenizer.json"))


@pytest.fixture(scope="module")
def lay(official_tiny_lm_dir, tok):
  return Layout.from_config(config.load_config(official_tiny_lm_dir), tok)


@pytest.fixture(scope="module")
def io(official_tiny_lm_dir):
  return np.load(os.path.join(official_tiny_lm_dir, "io.npz"))


@pytest.fixture(scope="module")
def audio_tc(official_tiny_lm_dir):
  """The fixture's `tokenizer/io.npz:lm_audio_tokens` (frame-major, flat) as [T, 8] frames."""
  return np.load(os.path.join(official_tiny_lm_dir, "lm_audio_tokens.npy")).reshape(-1, 8)


def _text(tok, text):
  return TextSegment(layout.encode_text(tok, text))


def test_special_tokens_are_the_fixture_ids(official_tiny_lm_dir, tok, lay):
  with open(os.path.join(official_tiny_lm_dir, "special_tokens.json")) as f:
    expected = json.load(f)["ids"]
  ours = {layout.SPECIAL_STRINGS[name]: getattr(lay.tokens, name)
          for name in layout.SPECIAL_STRINGS}
  assert ours == expected
  assert lay.audio_empty_ids == (1024, 1024, 128, 128, 128, 128, 128, 128)
  assert lay.group_size == 4


def test_missing_special_token_is_named(official_tiny_lm_dir):
  with open(os.path.join(official_tiny_lm_dir, "tokenizer.json")) as f:
    raw = json.load(f)
  raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] != "<|eot|>"]
  assert "<|eot|>" not in raw["model"]["vocab"]
  with pytest.raises(LayoutError, match=r"<\|eot\|>"):
    SpecialTokens.from_tokenizer(tokenizers.Tokenizer.from_str(json.dumps(raw)))


def test_builder_reproduces_the_official_prompt(tok, lay, io, audio_tc):
  """The README's prompt: "hi", frames 0..11, " ok", frames 40..47, "<|sostm|>"."""
  segments = [_text(tok, "hi"), AudioSegment(audio_tc[0:12]), _text(tok, " ok"),
              AudioSegment(audio_tc[40:48]), _text(tok, "<|sostm|>")]
  ids_kl = layout.build_sequence(segments, lay)
  assert ids_kl.dtype == np.int32
  np.testing.assert_array_equal(ids_kl, io["input_ids"])


def test_builder_reproduces_the_official_stream(tok, lay, io, audio_tc):
  """The fixture stream speaks " the licence" (4 tokens + <|eot|> = one text chunk) over frames
  12..39 (7 patches: a chunk of 5, then 2 left over)."""
  ids_kl = layout.build_sequence(
      [StreamSegment(layout.encode_text(tok, " the licence"), audio_tc[12:40])], lay)
  np.testing.assert_array_equal(ids_kl, io["stream_segment_ids"])


def test_official_arrays_parse_back_to_their_segments(tok, lay, io, audio_tc):
  prompt = layout.parse_sequence(io["input_ids"], lay)
  assert [type(s) for s in prompt] == [TextSegment, AudioSegment, TextSegment, AudioSegment,
                                       TextSegment]
  np.testing.assert_array_equal(prompt[0].ids_n, layout.encode_text(tok, "hi"))
  np.testing.assert_array_equal(prompt[1].codes_tc, audio_tc[0:12])
  np.testing.assert_array_equal(prompt[2].ids_n, layout.encode_text(tok, " ok"))
  np.testing.assert_array_equal(prompt[3].codes_tc, audio_tc[40:48])
  assert prompt[4].ids_n.tolist() == [lay.tokens.sostm]  # an open stream prompt is text
  (stream,) = layout.parse_sequence(io["stream_segment_ids"], lay)
  assert tok.decode(stream.ids_n.tolist()) == " the licence"
  np.testing.assert_array_equal(stream.codes_tc, audio_tc[12:40])


def _stream_pattern(ids_kl, lay):
  """Row 0 as letters: T text, A audio patch, and s / e / t for sostm / eostm / eot."""
  letters = {lay.tokens.sostm: "s", lay.tokens.eostm: "e", lay.tokens.eot: "t",
             lay.tokens.empty: "A"}
  return "".join(letters.get(int(x), "T") for x in layout.text_tokens(ids_kl, lay))


@pytest.mark.parametrize("n_text, n_frames, pattern", [
    (12, 9, "s" + "TTTTT" + "AAA" + "TTTTT" + "TTt" + "e"),  # leftover text
    (3, 45, "s" + "TTTt" + "AAAAA" + "AAAAA" + "AA" + "e"),  # leftover audio, 45 -> 48 frames
    (9, 40, "s" + "TTTTT" + "AAAAA" + "TTTTt" + "AAAAA" + "e"),  # even chunks
    (0, 4, "s" + "t" + "A" + "e"),  # no text: <|eot|> alone leads
    (4, 0, "s" + "TTTTt" + "e"),  # no audio
])
def test_stream_chunks_alternate_like_the_official_builder(lay, n_text, n_frames, pattern):
  rng = np.random.RandomState(n_text)
  ids_kl = layout.build_sequence([StreamSegment(rng.randint(0, 400, n_text),
                                                rng.randint(0, 128, (n_frames, 8)))], lay)
  assert _stream_pattern(ids_kl, lay) == pattern


def _random_segments(rng, n_segments):
  segments = []
  for i in range(n_segments):
    kind = ("text", "audio", "stream")[i % 3]
    n_frames = rng.randint(0, 50)  # mostly not a multiple of 4
    codes_tc = rng.randint(0, 128, (n_frames, 8))
    if kind == "text":
      segments.append(TextSegment(rng.randint(0, 400, rng.randint(1, 9))))
    elif kind == "audio":
      segments.append(AudioSegment(codes_tc))
    else:
      segments.append(StreamSegment(rng.randint(0, 400, rng.randint(0, 23)), codes_tc))
  return segments


@pytest.mark.parametrize("seed", range(8))
def test_round_trip_is_exact(lay, seed):
  """Text + audio -> sequence -> text + audio, with streams and odd lengths. Audio comes back
  padded to whole patches by repeating its last frame: the original frames, then the copies."""
  segments = _random_segments(np.random.RandomState(seed), 9)
  ids_kl = layout.build_sequence(segments, lay)
  parsed = layout.parse_sequence(ids_kl, lay)
  assert [type(s) for s in parsed] == [type(s) for s in segments]
  for ours, orig in zip(parsed, segments):
    if not isinstance(orig, AudioSegment):
      np.testing.assert_array_equal(ours.ids_n, orig.ids_n)
    if not isinstance(orig, TextSegment):
      n = len(orig.codes_tc)
      assert len(ours.codes_tc) == -(-n // 4) * 4
      np.testing.assert_array_equal(ours.codes_tc[:n], orig.codes_tc)
      np.testing.assert_array_equal(ours.codes_tc[n:], np.repeat(orig.codes_tc[-1:],
                                                                   len(ours.codes_tc) - n, 0))
  np.testing.assert_array_equal(layout.build_sequence(parsed, lay), ids_kl)


def test_adjacent_text_segments_read_back_as_one(lay):
  ids_kl = layout.build_sequence([TextSegment([1, 2]), TextSegment([3])], lay)
  (text,) = layout.parse_sequence(ids_kl, lay)
  assert text.ids_n.tolist() == [1, 2, 3]


def test_text_and_audio_positions_hold_their_fixed_values(lay):
  codes_tc = np.arange(5 * 8).reshape(5, 8) % 100
  ids_kl = layout.build_sequence([TextSegment([7]), AudioSegment(codes_tc)], lay)
  empty_ids = np.asarray(lay.audio_empty_ids)
  assert ids_kl.shape == (9, 4 * 5)  # "7", sosp, 2 patches (5 frames padded to 8), eosp
  assert layout.text_tokens(ids_kl, lay).tolist() == [7, lay.tokens.sosp, lay.tokens.empty,
                                                      lay.tokens.empty, lay.tokens.eosp]
  assert (np.delete(ids_kl[0], np.s_[::4]) == layout.FILLER).all()
  patches_pgc = layout.patch_codes(ids_kl, lay)
  for p in (0, 1, 4):
    assert (patches_pgc[p] == empty_ids).all()
  np.testing.assert_array_equal(patches_pgc[2:4].reshape(-1, 8), layout.pad_frames(codes_tc, 4))


@pytest.mark.parametrize("make, message", [
    (lambda t: TextSegment([5, t.empty]), "<|empty|>"),
    (lambda t: TextSegment([t.sosp]), "<|sosp|>"),
    (lambda t: TextSegment([t.eostm]), "<|eostm|>"),
    (lambda t: StreamSegment([t.sostm], np.zeros((4, 8), int)), "<|sostm|>"),
    (lambda t: AudioSegment(np.full((4, 8), 128)), "channel 2"),
    (lambda t: AudioSegment(np.zeros((4, 7), int)), "8 channels"),
    (lambda t: StreamSegment([1], np.full((4, 8), -1)), "channel 0"),
])
def test_builder_rejects_what_would_not_read_back(lay, make, message):
  with pytest.raises(LayoutError, match=message.replace("|", r"\|")):
    layout.build_sequence([make(lay.tokens)], lay)


def test_parser_rejects_malformed_sequences(lay):
  good_kl = layout.build_sequence([TextSegment([3]), AudioSegment(np.zeros((4, 8), int))], lay)
  filler_kl = good_kl.copy()
  filler_kl[0, 1] = 0
  text_audio_kl = good_kl.copy()
  text_audio_kl[3, 0] = 5
  unclosed_kl = good_kl[:, :-4]
  stray_kl = good_kl[:, 8:12]
  for bad_kl, message in [(filler_kl, "filler"), (text_audio_kl, "not the empty ids"),
                          (unclosed_kl, "no <|eosp|>"), (stray_kl, "outside"),
                          (good_kl[:, :-2], "shape")]:
    with pytest.raises(LayoutError, match=message.replace("|", r"\|")):
      layout.parse_sequence(bad_kl, lay)
