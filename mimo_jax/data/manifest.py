"""Where training data comes from: JSONL manifests and LibriSpeech / LibriTTS folders, as `Record`s.

A manifest has one JSON object per line, an utterance or an SFT conversation. An utterance:
  {"audio": "clips/a.wav", "text": "hello", "speaker": "s1", "language": "en", "task": "asr",
   "duration": 1.9, "caption": "A woman greets someone warmly."}
`audio` is required (relative paths are relative to the manifest's folder), `text` defaults to "",
the rest are optional. `caption` is the only source of audio-captioning examples: an utterance
without one is never captioned.

An SFT conversation (the one SFT format; every chat task of `mimo_jax.data.templates` is one):
  {"task": "spoken_dialogue_sft", "messages": [
     {"role": "system", "content": [{"text": "Your voice should be:"}, {"audio": "voice.wav"}]},
     {"role": "user", "content": [{"audio": "question.wav"}]},
     {"role": "assistant", "content": [{"text": "It is sunny.", "audio": "answer.wav"}]}]}
`messages`: turns of role `system`, `user` or `assistant`, the last one the assistant's. A turn's
`content` is a string (one text part) or a list of parts: `{"text": ...}`, `{"audio": PATH}`
(an audio span), or, in an assistant turn, `{"text": ..., "audio": PATH}`: a spoken reply, its
transcript and audio (a stream). An assistant turn may set `"thinking": true`: it opens with
`<think>\\n` and its text holds the reasoning, `</think>` and the reply. Audio is tokenised at
pre-tokenisation like an utterance's. Training renders it with `templates.conversation`: every
assistant turn (its reply and `<|im_end|>`) is a target, nothing else. `task` (default `chat`)
names it, one of `templates.CHAT_TASKS`.

Folders in the LibriSpeech layout
(`<spk>/<chapter>/<spk>-<chapter>.trans.txt` beside `<utt>.flac`) and the LibriTTS layout
(`<utt>.wav` beside `<utt>.normalized.txt`) are read into the same records. Paths may be local
or `gs://...`: every file is reached through `etils.epath`, so one code path serves both (only
local paths are exercised by the tests).

Nothing is lost silently: a line that is not a usable record is skipped and counted in a `Skips`
under a named reason, which the callers report at the end and save beside their outputs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import unicodedata

from etils import epath

from mimo_jax.data import templates

# Skip reasons owned by the sources; the audio and text checks add theirs (see pretokenize).
MALFORMED_LINE = "malformed_manifest_line"
CONVERSATION = "conversation_not_utterance"

# Examples of each skip reason kept for the report (the counts are always complete).
EXAMPLES_PER_REASON = 20


@dataclasses.dataclass(frozen=True)
class Part:
  """A part of a conversation turn: text, audio (a file path), or both (a spoken reply)."""

  text: str = ""
  audio: str = ""


@dataclasses.dataclass(frozen=True)
class Message:
  """A conversation turn: role, parts, and for an assistant turn whether it opens `<think>\\n`."""

  role: str
  parts: tuple[Part, ...]
  thinking: bool = False


@dataclasses.dataclass(frozen=True)
class Record:
  """One utterance (its audio file, transcript and labels) or one SFT conversation (`messages`,
  no `audio`). `key` is unique within its source."""

  key: str
  audio: str
  text: str = ""
  speaker: str = ""
  language: str = ""
  task: str = ""
  duration: float | None = None
  caption: str = ""
  messages: tuple[Message, ...] = ()

  @property
  def audio_paths(self) -> list[str]:
    """Every audio file the record needs, in order."""
    if not self.messages:
      return [self.audio]
    return [part.audio for m in self.messages for part in m.parts if part.audio]


class Skips:
  """Counts of skipped inputs per reason, with the first few (item, message) pairs of each."""

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()
    self.examples: dict[str, list[dict]] = collections.defaultdict(list)

  def add(self, reason: str, item: str, message: str) -> None:
    self.counts[reason] += 1
    if len(self.examples[reason]) < EXAMPLES_PER_REASON:
      self.examples[reason].append({"item": item, "message": message})

  def merge(self, other: Skips | dict) -> None:
    """Adds another Skips (or its `to_json()`)."""
    other = other if isinstance(other, dict) else other.to_json()
    for reason, count in other["counts"].items():
      self.counts[reason] += count
      room = EXAMPLES_PER_REASON - len(self.examples[reason])
      self.examples[reason].extend(other["examples"].get(reason, [])[:max(room, 0)])

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def to_json(self) -> dict:
    return {"counts": dict(sorted(self.counts.items())),
            "examples": {r: list(self.examples[r]) for r in sorted(self.counts)}}


def normalize_text(text: str) -> str:
  """NFC Unicode, whitespace runs collapsed to one space, trimmed: the same transcript always
  tokenises the same way whatever its source's spacing."""
  return " ".join(unicodedata.normalize("NFC", text).split())


def _resolve(base: epath.Path, path: str) -> str:
  """`path` as given if absolute or a URL, else relative to `base`."""
  if "://" in path or path.startswith("/"):
    return path
  return str(base / path)


_OPTIONAL_STR = ("speaker", "language", "task", "caption")


def parse_manifest_line(line: str, where: str, base: epath.Path) -> Record:
  """One manifest line -> Record; ValueError naming `where` and the problem if malformed."""
  try:
    raw = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not JSON ({e})") from None
  if not isinstance(raw, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
  if "messages" in raw:
    return _parse_conversation(raw, where, base)
  audio = raw.get("audio")
  if not isinstance(audio, str) or not audio:
    raise ValueError(f"{where}: 'audio' must be a non-empty string path, got {audio!r}")
  text = raw.get("text", "")
  if not isinstance(text, str):
    raise ValueError(f"{where}: 'text' must be a string, got {type(text).__name__}")
  fields = {}
  for name in _OPTIONAL_STR:
    value = raw.get(name, "")
    if not isinstance(value, str):
      raise ValueError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    fields[name] = value
  duration = raw.get("duration")
  if duration is not None and (isinstance(duration, bool) or
                               not isinstance(duration, (int, float)) or duration < 0):
    raise ValueError(f"{where}: 'duration' must be a non-negative number, got {duration!r}")
  fields["caption"] = normalize_text(fields["caption"])
  return Record(key=where, audio=_resolve(base, audio), text=normalize_text(text),
                duration=None if duration is None else float(duration), **fields)


def _parse_conversation(raw: dict, where: str, base: epath.Path) -> Record:
  """An SFT conversation line (see the module docstring) -> Record with `messages`."""
  task = raw.get("task", "chat")
  if task not in templates.CHAT_TASKS:
    raise ValueError(f"{where}: 'task' must be one of {templates.CHAT_TASKS}, got {task!r}")
  unknown = sorted(set(raw) - {"task", "messages"})
  if unknown:
    raise ValueError(f"{where}: unknown fields {unknown} in a conversation")
  messages = raw["messages"]
  if not isinstance(messages, list) or not messages:
    raise ValueError(f"{where}: 'messages' must be a non-empty list of turns")
  turns = tuple(_parse_message(m, f"{where}: message {i}", base) for i, m in enumerate(messages))
  if turns[-1].role != "assistant":
    raise ValueError(f"{where}: the last message must be the assistant's, got "
                     f"{turns[-1].role!r}")
  return Record(key=where, audio="", task=task, messages=turns)


def _parse_message(raw, where: str, base: epath.Path) -> Message:
  if not isinstance(raw, dict):
    raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
  unknown = sorted(set(raw) - {"role", "content", "thinking"})
  if unknown:
    raise ValueError(f"{where}: unknown fields {unknown}")
  role, content, thinking = raw.get("role"), raw.get("content"), raw.get("thinking", False)
  if role not in ("system", "user", "assistant"):
    raise ValueError(f"{where}: 'role' must be system, user or assistant, got {role!r}")
  if not isinstance(thinking, bool) or (thinking and role != "assistant"):
    raise ValueError(f"{where}: 'thinking' must be true or false, and only an assistant turn "
                     f"thinks; got {thinking!r} in a {role} turn")
  if isinstance(content, str):
    content = [{"text": content}]
  if not isinstance(content, list) or not content:
    raise ValueError(f"{where}: 'content' must be a string or a non-empty list of parts")
  parts = tuple(_parse_part(p, f"{where} part {j}", base, role) for j, p in enumerate(content))
  return Message(role, parts, thinking)


def _parse_part(raw, where: str, base: epath.Path, role: str) -> Part:
  if not isinstance(raw, dict) or not raw or set(raw) - {"text", "audio"}:
    raise ValueError(f"{where}: a part must be {{'text': ...}}, {{'audio': PATH}} or both, got "
                     f"{raw!r}")
  text, audio = raw.get("text"), raw.get("audio")
  for name, value in (("text", text), ("audio", audio)):
    if value is not None and (not isinstance(value, str) or not value.strip()):
      raise ValueError(f"{where}: {name!r} must be a non-empty string, got {value!r}")
  if text is not None and audio is not None and role != "assistant":
    raise ValueError(f"{where}: a spoken reply (text and audio) belongs to an assistant turn, "
                     f"not a {role} turn")
  # NFC only: chat text keeps its layout (newlines, the `\n\n` after a system prompt).
  return Part(text=unicodedata.normalize("NFC", text) if text is not None else "",
              audio=_resolve(base, audio) if audio is not None else "")


def read_manifest(path: str, skips: Skips) -> list[Record]:
  """All usable records of a JSONL manifest, in file order; malformed lines go to `skips`.

  Record keys are `<manifest file name>:<line number>`, stable across runs. Blank lines are not
  records and are ignored.
  """
  manifest = epath.Path(path)
  if not manifest.exists():
    raise FileNotFoundError(f"manifest {path}: no such file")
  records = []
  with manifest.open("r") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{manifest.name}:{number}"
      try:
        records.append(parse_manifest_line(line, where, manifest.parent))
      except ValueError as e:
        skips.add(MALFORMED_LINE, where, str(e))
  return records


def write_manifest(records: list[dict], path: str) -> None:
  """Writes dicts (manifest fields) as JSONL; the inverse of `read_manifest` for tools and tests."""
  with epath.Path(path).open("w") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_librispeech(root: str, skips: Skips) -> list[Record]:
  """Records of a LibriSpeech-style (`*.trans.txt`) or LibriTTS-style (`*.normalized.txt`) tree.

  LibriSpeech: each `<spk>-<chapter>.trans.txt` lists `<utt-id> <TRANSCRIPT>` lines for the
  `<utt-id>.flac` files beside it. LibriTTS: `<utt-id>.wav` with its text in
  `<utt-id>.normalized.txt` (or `.original.txt`). The speaker is the id's first `-`/`_` field.
  Records are sorted by key so the order does not depend on the file system. A transcript line
  without text is skipped as malformed; a listed utterance whose audio is missing is kept, so the
  audio checks report it as a missing file.
  """
  base = epath.Path(root)
  if not base.exists():
    raise FileNotFoundError(f"corpus folder {root}: no such folder")
  files = sorted(_walk(base), key=str)
  records = {}
  for trans in (f for f in files if f.name.endswith(".trans.txt")):
    for number, line in enumerate(trans.read_text().splitlines(), start=1):
      if not line.strip():
        continue
      utt, _, text = line.strip().partition(" ")
      if not text.strip():
        skips.add(MALFORMED_LINE, f"{trans.name}:{number}", f"{trans}:{number}: no transcript")
        continue
      records[utt] = _libri_record(utt, str(trans.parent / f"{utt}.flac"), text)
  for suffix in (".normalized.txt", ".original.txt"):
    for text_file in (f for f in files if f.name.endswith(suffix)):
      utt = text_file.name[:-len(suffix)]
      if utt not in records:
        records[utt] = _libri_record(utt, str(text_file.parent / f"{utt}.wav"),
                                     text_file.read_text())
  return [records[k] for k in sorted(records)]


def _walk(folder: epath.Path):
  """Every file under `folder` (epath's glob refuses `**` on GCS, so walk with iterdir)."""
  for entry in folder.iterdir():
    if entry.is_dir():
      yield from _walk(entry)
    else:
      yield entry


def _libri_record(utt: str, audio: str, text: str) -> Record:
  speaker = utt.replace("_", "-").split("-")[0]
  return Record(key=utt, audio=audio, text=normalize_text(text), speaker=speaker, language="en")


def utterances(records: list[Record], skips: Skips) -> list[Record]:
  """The utterances of `records`, for the readers of single clips (codec training, evaluation);
  each SFT conversation among them is counted in `skips`, never dropped silently."""
  for record in records:
    if record.messages:
      skips.add(CONVERSATION, record.key, "an SFT conversation (`messages`) where single "
                "utterances are read")
  return [record for record in records if not record.messages]


def read_source(path: str, skips: Skips) -> list[Record]:
  """A manifest file (`*.jsonl` / `*.json`) or a LibriSpeech / LibriTTS folder."""
  if epath.Path(path).is_dir():
    return read_librispeech(path, skips)
  return read_manifest(path, skips)
