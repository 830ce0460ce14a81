"""Per-item results on disk: one JSONL file per host, resumable, merged at the end.

Host i of n evaluates items i, i+n, i+2n, ... and appends one JSON line per finished item to
`items.host<i>-of-<n>.jsonl` (flushed and fsynced per batch). After a kill, the rows already there
are read back and their items skipped; a line torn by the kill is dropped first. `merge` reads
every host's file (of any host count, so a rerun on another topology still merges) and returns
the rows in item order.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Sequence

PATTERN = "items.host*-of-*.jsonl"


def host_file(folder: str, index: int, count: int) -> str:
  return os.path.join(folder, f"items.host{index:03d}-of-{count:03d}.jsonl")


def read_rows(path: str) -> list[dict]:
  """The complete rows of a results file; a torn last line (a kill mid-write) is cut off."""
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  rows, good = [], 0
  for line in data.split(b"\n"):
    end = good + len(line) + 1
    if end > len(data):  # the unterminated tail
      break
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        break
    good = end
  if good < len(data):
    with open(path, "r+b") as f:
      f.truncate(good)
  return rows


def append_rows(path: str, rows: Iterable[dict]) -> None:
  text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=True) + "\n" for r in rows)
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def pending(items: Sequence[dict], done: Iterable[dict], index: int, count: int) -> list[dict]:
  """This host's share of `items`, less those with a row in `done`."""
  finished = {r["id"] for r in done}
  return [it for it in items[index::count] if it["id"] not in finished]


def merge(folder: str, items: Sequence[dict]) -> list[dict]:
  """Every host's rows for `items`, in item order (one row per item: the first found)."""
  by_id = {}
  for path in sorted(glob.glob(os.path.join(folder, PATTERN))):
    for row in read_rows(path):
      by_id.setdefault(row["id"], row)
  return [by_id[it["id"]] for it in items if it["id"] in by_id]
