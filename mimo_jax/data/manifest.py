"""Where utterances come from: JSONL manifests and LibriSpeech / LibriTTS folders, as `Record`s.

A manifest has one JSON object per line:
  {"audio": "clips/a.wav", "text": "hello", "speaker": "s1", "language": "en", "task": "asr",
   "duration": 1.9}
`audio` is required (relative paths are relative to the manifest's folder), `text` defaults to "",
the rest are optional. Folders in the LibriSpeech layout
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

# Skip reasons owned by the sources; the audio and text checks add theirs (see pretokenize).
MALFORMED_LINE = "malformed_manifest_line"

# Examples of each skip reason kept for the report (the counts are always complete).
EXAMPLES_PER_REASON = 20


@dataclasses.dataclass(frozen=True)
class Record:
  """One utterance: its audio file, transcript and labels. `key` is unique within its source."""

  key: str
  audio: str
  text: str = ""
  speaker: str = ""
  language: str = ""
  task: str = ""
  duration: float | None = None


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


_OPTIONAL_STR = ("speaker", "language", "task")


def parse_manifest_line(line: str, where: str, base: epath.Path) -> Record:
  """One manifest line -> Record; ValueError naming `where` and the problem if malformed."""
  try:
    raw = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not JSON ({e})") from None
  if not isinstance(raw, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
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
  return Record(key=where, audio=_resolve(base, audio), text=normalize_text(text),
                duration=None if duration is None else float(duration), **fields)


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


def read_source(path: str, skips: Skips) -> list[Record]:
  """A manifest file (`*.jsonl` / `*.json`) or a LibriSpeech / LibriTTS folder."""
  if epath.Path(path).is_dir():
    return read_librispeech(path, skips)
  return read_manifest(path, skips)
